"""report.html for an evaluation on raw text: perplexity of each model with intervals, each run against
its base, the forgetting probe, and the runs' loss curves. Number cells carry `data-key` / `data-value`
as in the main report, so the page can be checked against eval.json."""

from __future__ import annotations

from html import escape


def systems_table(result: dict) -> str:
    from tunery.eval.report_html import _num

    lines = ['<table id="text"><tr><th>system</th><th>loss per token</th><th>95% CI</th><th>perplexity</th>'
             "<th>95% CI</th><th>tokens</th></tr>"]
    for i, row in enumerate(result["systems"]):
        key = f"systems.{i}"
        lines.append(f"<tr><td>{escape(row['system']['name'])}</td>{_num(row['loss'], key + '.loss', '{:.4f}')}"
                     f"<td class=\"num\">{row['loss_low']:.4f} - {row['loss_high']:.4f}</td>"
                     f"{_num(row['ppl'], key + '.ppl', '{:.2f}')}<td class=\"num\">{row['ppl_low']:.2f} - "
                     f"{row['ppl_high']:.2f}</td>{_num(row['tokens'], key + '.tokens', '{}')}</tr>")
    return "\n".join(lines + ["</table>"])


def tests_table(result: dict) -> str:
    from tunery.eval.report_html import _num

    if not result["comparisons"]:
        return '<p class="muted">No run was evaluated, so there is nothing to test against the base.</p>'
    lines = ['<table id="text-tests"><tr><th>run</th><th>vs</th><th>loss difference per token</th><th>95% CI</th>'
             "<th>perplexity ratio</th><th>p (paired bootstrap)</th><th>significant (p &lt; 0.05)</th></tr>"]
    for i, c in enumerate(result["comparisons"]):
        key = f"comparisons.{i}"
        lines.append(f"<tr><td>{escape(c['a'])}</td><td>{escape(c['b'])}</td>{_num(c['diff'], key + '.diff', '{:+.4f}')}"
                     f"<td class=\"num\">{c['diff_low']:+.4f} to {c['diff_high']:+.4f}</td>"
                     f"{_num(c['ppl_ratio'], key + '.ppl_ratio', '{:.3f}')}{_num(c['p'], key + '.p', '{:.3g}')}"
                     f"<td>{'yes' if c['significant'] else 'no'}</td></tr>")
    return "\n".join(lines + ["</table>"])


def render_text_report(result: dict, metrics_by_run: dict[str, list[dict]]) -> str:
    """The whole page for `kind: "text"` results."""
    from tunery.eval.report_html import forgetting_section, plain_page

    intro = (f'{result["n_examples"]} documents from {escape(result["data"])}, scored in windows of '
             f'{result["max_length"]} tokens; tunery {escape(result["tunery_version"])}. Loss per token over every '
             "token after each document's first; intervals resample whole documents.")
    sections = [("Perplexity on the same documents", systems_table(result)),
                ("Each run against its base", tests_table(result)),
                ("Forgetting probe", forgetting_section(result))]
    return plain_page("held-out text", intro, result, sections, metrics_by_run)
