"""report.html for an evaluation on preference pairs: the table with intervals, the tests against the
base, and the loss curves of the runs. Number cells carry `data-key` / `data-value` as in the main
report, so the page can be checked against eval.json."""

from __future__ import annotations

from html import escape

from tunery.eval.pairs import COLUMN_TEXT, COLUMNS


def pairs_table(result: dict) -> str:
    from tunery.eval.report_html import _num, _pct

    head = "".join(f"<th>{escape(COLUMN_TEXT[c])}</th><th>95% CI</th>" for c in COLUMNS)
    lines = [f'<table id="pairs"><tr><th>system</th><th>kind</th>{head}<th>mean margin</th></tr>']
    for i, row in enumerate(result["systems"]):
        key = f"systems.{i}"
        cells = [f"<td>{escape(row['system']['name'])}</td><td>{escape(row['system']['kind'])}</td>"]
        for column in COLUMNS:
            s = row["scores"].get(column)
            if s is None:
                cells.append("<td>n/a</td><td></td>")
                continue
            cells.append(_pct(s["mean"], f"{key}.scores.{column}.mean"))
            cells.append(f'<td class="num">{s["low"]:.1%} - {s["high"]:.1%}</td>')
        name = next((m for m in ("mean_log_ratio_margin", "mean_reward_margin", "mean_logp_margin") if m in row), None)
        cells.append(_num(row.get(name), f"{key}.{name}", "{:+.3f}") if name else "<td>n/a</td>")
        lines.append(f"<tr>{''.join(cells)}</tr>")
    return "\n".join(lines + ["</table>"])


def tests_table(result: dict) -> str:
    from tunery.eval.report_html import _num

    if not result["comparisons"]:
        return '<p class="muted">No run was evaluated, so there is nothing to test against the base.</p>'
    lines = ['<table id="pair-tests"><tr><th>run</th><th>figure</th><th>vs</th><th>figure</th><th>difference</th>'
             "<th>95% CI</th><th>test</th><th>p</th><th>significant (p &lt; 0.05)</th></tr>"]
    for i, c in enumerate(result["comparisons"]):
        key = f"comparisons.{i}"
        lines.append(f"<tr><td>{escape(c['a'])}</td><td>{escape(COLUMN_TEXT[c['a_column']])}</td>"
                     f"<td>{escape(c['b'])}</td><td>{escape(COLUMN_TEXT[c['b_column']])}</td>"
                     f"{_num(c['diff'], key + '.diff', '{:+.1%}')}<td class=\"num\">{c['diff_low']:+.1%} to "
                     f"{c['diff_high']:+.1%}</td><td>{c['test']}</td>{_num(c['p'], key + '.p', '{:.3g}')}"
                     f"<td>{'yes' if c['significant'] else 'no'}</td></tr>")
    return "\n".join(lines + ["</table>"])


def render_pairs_report(result: dict, metrics_by_run: dict[str, list[dict]]) -> str:
    """The whole page for `kind: "pairs"` results."""
    from tunery.eval.report_html import plain_page

    intro = (f'{result["n_examples"]} pairs from {escape(result["data"])}; tunery '
             f'{escape(result["tunery_version"])}. Preference accuracy: the share of pairs whose chosen answer scores '
             "higher (a policy: its DPO implicit reward against the base model; a reward model: its reward). A base "
             "model is its own reference, so its preference accuracy is 50% by construction; its log-prob accuracy "
             "says which answer its own likelihood prefers. Mean margin: the implicit-reward log-ratio margin for a "
             "policy run, the reward margin for a reward run, log p(chosen) - log p(rejected) for a base.")
    sections = [("Preference accuracy on the same pairs", pairs_table(result)),
                ("Each run against its base", tests_table(result))]
    return plain_page("preference pairs", intro, result, sections, metrics_by_run)
