"""report.html: one self-contained file (inline CSS, pictures as base64 PNG) that opens offline and
shows exactly the numbers of eval.json. Every number cell carries `data-key` (its path in eval.json)
and `data-value` (the raw number), so a test, or a script, can check the page against the file."""

from __future__ import annotations

import base64
import json
import math
from html import escape
from pathlib import Path

from tunery.eval import plots

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem}
th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.best td{background:#eef7ee;font-weight:600}
.summary{background:#eef3fb;border-left:4px solid #3366cc;padding:.7rem 1rem;font-size:1.02rem}
.warn{background:#fff6e5;border-left:4px solid #e69900;padding:.4rem .8rem;margin:.3rem 0}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:.82rem}
.muted{color:#666;font-size:.85rem}img{max-width:100%;border:1px solid #eee}
td.diff,tr.diff td{background:#fff3c4}
"""


def _num(value, key: str, fmt: str = "{:.3f}") -> str:
    """A table cell with the formatted number, its eval.json path and raw value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f'<td class="num" data-key="{escape(key)}">n/a</td>'
    return f'<td class="num" data-key="{escape(key)}" data-value="{value!r}">{escape(fmt.format(value))}</td>'


def _pct(value, key: str) -> str:
    return _num(value, key, "{:.1%}")


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return '<p class="muted">(no picture: install matplotlib, pip install "tunery[plots]")</p>'
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def comparison_table(result: dict) -> str:
    """The systems side by side: each grader with its 95% interval, answer loss, latency, tokens."""
    labels, primary = result["graders"], result["primary"]
    head = "".join(f"<th>{escape(label)}{' (primary)' if label == primary else ''}</th><th>95% CI</th>"
                   for label in labels)
    lines = [f'<table id="comparison"><tr><th>system</th>{head}<th>answer loss</th><th>perplexity</th>'
             "<th>s / answer</th><th>tokens generated</th></tr>"]
    for i, row in enumerate(result["systems"]):
        key = f"systems.{i}"
        best = ' class="best"' if row["system"]["name"] == result["best"] else ""
        guard = f" (with guard: {row['system']['guard']})" if row["system"].get("guard") else ""
        cells = [f"<td>{escape(row['system']['name'] + guard)}</td>"]
        for label in labels:
            s = row["scores"][label]
            cells.append(_pct(s["mean"], f"{key}.scores.{label}.mean"))
            cells.append(f'<td class="num" data-key="{escape(key)}.scores.{escape(label)}.ci">'
                         f"{_span(s['low'])} - {_span(s['high'])}</td>")
        cells += [_num(row["loss"]["loss"], f"{key}.loss.loss"), _num(row["loss"]["ppl"], f"{key}.loss.ppl", "{:.2f}"),
                  _num(row["latency_s"], f"{key}.latency_s", "{:.2f}"),
                  _num(row["tokens_generated"], f"{key}.tokens_generated", "{:d}")]
        lines.append(f"<tr{best}>{''.join(cells)}</tr>")
    return "\n".join(lines + ["</table>"])


def _span(value) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.1%}"


def tests_table(result: dict) -> str:
    """The best system against each other one: difference, its interval, the test and p."""
    if not result["comparisons"]:
        return '<p class="muted">Only one system was scored.</p>'
    lines = ['<table id="significance"><tr><th>best</th><th>vs</th><th>difference</th><th>95% CI</th>'
             "<th>test</th><th>p</th><th>significant (p &lt; 0.05)</th></tr>"]
    for i, c in enumerate(result["comparisons"]):
        key = f"comparisons.{i}"
        lines.append(f"<tr><td>{escape(c['a'])}</td><td>{escape(c['b'])}</td>{_num(c['diff'], key + '.diff', '{:+.1%}')}"
                     f"<td class=\"num\">{c['diff_low']:+.1%} to {c['diff_high']:+.1%}</td><td>{c['test']}</td>"
                     f"{_num(c['p'], key + '.p', '{:.3g}')}<td>{'yes' if c['significant'] else 'no'}</td></tr>")
    return "\n".join(lines + ["</table>"])


def disagreement_section(result: dict) -> str:
    out = []
    for run, rows in result["disagreements"].items():
        out.append(f"<h3>{escape(run)}: tuned vs base zero-shot</h3>")
        if not rows:
            out.append('<p class="muted">Tuned and base agree (on the primary grader) on every example.</p>')
            continue
        out.append('<table class="disagree"><tr><th>prompt</th><th>reference</th><th>base</th><th>tuned</th></tr>')
        for d in rows:
            out.append(f"<tr><td><pre>{escape(d['prompt'])}</pre></td><td><pre>{escape(d['reference'])}</pre></td>"
                       f"<td><pre>{escape(d['base'])}</pre><span class=\"muted\">score {d['base_score']:g}</span></td>"
                       f"<td><pre>{escape(d['tuned'])}</pre><span class=\"muted\">score {d['tuned_score']:g}</span></td></tr>")
        out.append("</table>")
    return "\n".join(out) or '<p class="muted">No run was evaluated, so there is no tuned model to compare.</p>'


def forgetting_section(result: dict) -> str:
    forgetting = result["forgetting"]
    if not forgetting:
        return '<p class="muted">No forgetting probe was scored (it needs a run and the probe enabled).</p>'
    out = ['<table id="forgetting"><tr><th>run</th><th>probe</th><th>items</th><th>before (base)</th>'
           "<th>after (tuned)</th><th>difference</th><th>p</th><th>lost</th><th>gained</th></tr>"]
    for run, f in forgetting.items():
        key = f"forgetting.{run}"
        guard = f" (with guard: {f['guard_label']})" if f.get("guard_label") else ""
        out.append(f"<tr><td>{escape(run + guard)}</td><td>{escape(str(f['probe']))}</td><td class=\"num\">{f['n']}</td>"
                   f"{_pct(f['before']['mean'], key + '.before.mean')}{_pct(f['after']['mean'], key + '.after.mean')}"
                   f"{_num(f['test']['diff'], key + '.test.diff', '{:+.1%}')}{_num(f['test']['p'], key + '.test.p', '{:.3g}')}"
                   f"<td class=\"num\">{f['lost']}</td><td class=\"num\">{f['gained']}</td></tr>")
    out.append("</table>")
    out += [kind_table(run, f) for run, f in forgetting.items() if f.get("by_kind")]
    out.append(_img(plots.probe_bars(forgetting), "forgetting probe before and after"))
    for run, f in forgetting.items():
        if f["changed"]:
            out.append(f"<h3>{escape(run)}: probe items that changed</h3><table><tr><th>item</th>"
                       "<th>before</th><th>after</th></tr>")
            for c in f["changed"]:
                out.append(f"<tr><td>{escape(c['prompt'])}</td><td class=\"{'diff' if c['before_score'] else ''}\">"
                           f"<pre>{escape(c['before'])}</pre></td><td class=\"{'diff' if c['after_score'] else ''}\">"
                           f"<pre>{escape(c['after'])}</pre></td></tr>")
            out.append("</table>")
    return "\n".join(out)


def kind_table(run: str, f: dict) -> str:
    """The probe of one run per kind of item: base and after with intervals, the paired test, items
    lost and gained; a significant drop is marked."""
    guard = f" (with guard: {f['guard_label']})" if f.get("guard_label") else ""
    out = [f"<h3>{escape(run)}: base / after{escape(guard)}, per kind of probe item</h3>",
           f'<table class="probe-kinds" id="probe-kinds-{escape(run)}"><tr><th>kind</th><th>items</th>'
           "<th>base</th><th>95% CI</th><th>after</th><th>95% CI</th><th>difference</th><th>p</th><th>lost</th>"
           "<th>gained</th></tr>"]
    for kind, k in f["by_kind"].items():
        key = f"forgetting.{run}.by_kind.{kind}"
        b, a, t = k["before"], k["after"], k["test"]
        dropped = ' class="diff"' if t["significant"] and t["diff"] < 0 else ""
        out.append(f"<tr{dropped}><td>{escape(kind)}</td><td class=\"num\">{k['n']}</td>"
                   f"{_pct(b['mean'], key + '.before.mean')}<td class=\"num\">{_span(b['low'])} - {_span(b['high'])}</td>"
                   f"{_pct(a['mean'], key + '.after.mean')}<td class=\"num\">{_span(a['low'])} - {_span(a['high'])}</td>"
                   f"{_num(t['diff'], key + '.test.diff', '{:+.1%}')}{_num(t['p'], key + '.test.p', '{:.3g}')}"
                   f"<td class=\"num\">{k['lost']}</td><td class=\"num\">{k['gained']}</td></tr>")
    return "\n".join(out + ["</table>"])


def signals_section(result: dict) -> str:
    leak = result["leakage"]
    out = []
    for row in result["systems"]:  # answers decoded under eval.choices / eval.json_schema (docs/constrained.md)
        c = row.get("constraint")
        if c:
            out.append(f"<p>Answers constrained to {escape(c['label'])}: <b>{escape(row['system']['name'])}</b> "
                       f"unconstrained would have given <b>{c['invalid_unconstrained']}</b> invalid answer(s) of "
                       f"{c['n']} ({c['invalid_share']:.0%}).</p>")
    if not leak["checked"]:
        out.append('<p class="muted">Overlap not checked: no training examples were known.</p>')
    else:
        out.append(f"<p>Training/evaluation overlap: <b>{leak['exact']}</b> exact, <b>{leak['near']}</b> near-duplicate "
                   f"(character n-gram Jaccard &ge; {leak['threshold']}); highest similarity of an evaluation "
                   f"example to a training one: {leak['max_similarity']}, mean nearest: {leak['mean_nearest_similarity']}.</p>")
        if leak["pairs"]:
            out.append("<table><tr><th>evaluation example</th><th>training example</th><th>similarity</th></tr>")
            out += [f"<tr><td>{escape(p['eval'])}</td><td>{escape(p['train'])}</td><td class=\"num\">{p['similarity']}</td></tr>"
                    for p in leak["pairs"][:20]]
            out.append("</table>")
    for run, o in result["overfitting"].items():
        if o["points"]:
            out.append(f"<h3>{escape(run)}: training vs validation loss</h3><table><tr><th>step</th>"
                       "<th>mean training loss since last evaluation</th><th>validation loss</th><th>gap</th></tr>")
            for p in o["points"]:
                out.append(f"<tr><td class=\"num\">{p['step']}</td><td class=\"num\">{_fmt(p['train_loss'])}</td>"
                           f"<td class=\"num\">{_fmt(p['val_loss'])}</td><td class=\"num\">{_fmt(p['gap'])}</td></tr>")
            out.append("</table>")
    return "\n".join(out)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def plain_page(kind: str, intro: str, result: dict, sections: list[tuple[str, str]],
               metrics_by_run: dict[str, list[dict]]) -> str:
    """A report page of another kind of evaluation (preference pairs, raw text): its heading, the
    intro (HTML), the summary and warnings of `result`, its sections (title, HTML), then the runs'
    loss curves."""
    parts = [
        f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tunery eval report ({kind})</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>tunery evaluation report: {escape(kind)}</h1>",
        f'<p class="muted">{intro}</p>',
        f'<p class="summary" id="summary">{escape(result["summary"])}</p>',
        "".join(f'<div class="warn">{escape(w)}</div>' for w in result["warnings"]),
        *[f"<h2>{escape(title)}</h2>\n{body}" for title, body in sections],
        "<h2>Loss curves</h2>",
        "".join(_img(plots.loss_curves(m, run), f"loss curves of {run}") for run, m in metrics_by_run.items())
        or '<p class="muted">No run metrics to plot.</p>',
        "</body></html>",
    ]
    return "\n".join(parts)


def render_report(result: dict, metrics_by_run: dict[str, list[dict]]) -> str:
    """The whole page as a string."""
    if result.get("kind") == "pairs":
        from tunery.eval.pairs_report import render_pairs_report

        return render_pairs_report(result, metrics_by_run)
    if result.get("kind") == "text":
        from tunery.eval.text_report import render_text_report

        return render_text_report(result, metrics_by_run)
    gen = result["generation"]
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tunery eval report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>tunery evaluation report</h1>",
        f'<p class="muted">{result["n_examples"]} examples from {escape(result["data"])}; graders: '
        f'{escape(", ".join(result["graders"]))}; generation: max {gen["max_new_tokens"]} new tokens, '
        f'temperature {gen["temperature"]}, seed {gen["seed"]}; tunery {escape(result["tunery_version"])}.</p>',
        f'<p class="summary" id="summary">{escape(result["summary"])}</p>',
        "".join(f'<div class="warn">{escape(w)}</div>' for w in result["warnings"]),
        "<h2>Comparison on the same examples</h2>", comparison_table(result),
        "<h2>Is the best one better?</h2>", tests_table(result),
        "<h2>Scores per grader</h2>", _img(plots.grader_bars(result["systems"], result["graders"]), "scores per grader"),
        "<h2>Loss curves</h2>",
        "".join(_img(plots.loss_curves(m, run), f"loss curves of {run}") for run, m in metrics_by_run.items())
        or '<p class="muted">No run metrics to plot.</p>',
        "<h2>Where tuned and base disagree</h2>", disagreement_section(result),
        "<h2>Forgetting probe</h2>", forgetting_section(result),
        "<h2>Overfitting and leakage signals</h2>", signals_section(result),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_outputs(result: dict, out_dir: Path, metrics_by_run: dict[str, list[dict]]) -> tuple[Path, Path]:
    """Write eval.json and report.html into `out_dir` (atomically); returns their paths."""
    from tunery.runfolder import write_text_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "eval.json", out_dir / "report.html"
    write_text_atomic(json_path, json.dumps(finite(result), indent=2) + "\n")
    write_text_atomic(html_path, render_report(result, metrics_by_run))
    return json_path, html_path


def finite(value):
    """A copy with NaN and infinities made None: JSON has no NaN, and eval.json must parse anywhere."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
