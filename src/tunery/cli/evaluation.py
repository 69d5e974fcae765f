"""Bodies of `tunery eval`, `tunery compare` and `tunery advise` (wired in cli/main.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tunery.errors import TuneryError


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def row_label(system: dict) -> str:
    """A row's name as shown, with the guard against forgetting its run trained with, if any."""
    guard = system.get("guard")
    return f"{system['name']} (with guard: {guard})" if guard else system["name"]


def format_forgetting(run: str, f: dict) -> list[str]:
    """The probe line of one run, then a table per kind of probe item when the probe has kinds."""
    guard = f" (with guard: {f['guard_label']})" if f.get("guard_label") else ""
    lines = [f"forgetting probe ({f['n']} items) {run}: base {f['before']['mean']:.1%} / after "
             f"{f['after']['mean']:.1%}{guard} ({f['test']['diff']:+.1%}, p={f['test']['p']:.3g}; "
             f"{f['lost']} lost, {f['gained']} gained)"]
    kinds = f.get("by_kind") or {}
    if kinds:
        width = max(len("kind"), *map(len, kinds))
        lines.append(f"  {'kind':<{width}}  {'items':>5}  {'base [95% CI]':>21}  {'after [95% CI]':>21}  "
                     f"{'change':>7}  {'p':>7}  {'lost':>4}  {'gained':>6}")
        for kind, k in kinds.items():
            b, a, t = k["before"], k["after"], k["test"]
            mark = " *" if t["significant"] and t["diff"] < 0 else ""
            lines.append(f"  {kind:<{width}}  {k['n']:>5}  {b['mean']:6.1%} [{b['low']:5.1%}, {b['high']:5.1%}]  "
                         f"{a['mean']:6.1%} [{a['low']:5.1%}, {a['high']:5.1%}]  {t['diff']:+7.1%}  {t['p']:7.3g}  "
                         f"{k['lost']:>4}  {k['gained']:>6}{mark}")
        if any(k["test"]["significant"] and k["test"]["diff"] < 0 for k in kinds.values()):
            lines.append("  (* a significant drop: p < 0.05)")
    return lines


def format_table(result: dict) -> str:
    """The comparison as plain text: one line per system, primary grader first, with intervals."""
    labels = result["graders"]
    width = max(len("system"), *(len(row_label(r["system"])) for r in result["systems"]))
    head = f"{'system':<{width}}  " + "  ".join(f"{label:>22}" for label in labels)
    lines = [head + f"  {'loss':>7}  {'s/answer':>8}  {'tokens':>6}", "-" * (len(head) + 29)]
    for row in result["systems"]:
        cells = []
        for label in labels:
            s = row["scores"][label]
            cells.append(f"{s['mean']:6.1%} [{s['low']:5.1%}, {s['high']:5.1%}]".rjust(22))
        mark = " *" if row["system"]["name"] == result["best"] else ""
        loss = row["loss"]["loss"]
        lines.append(f"{row_label(row['system']):<{width}}  " + "  ".join(cells)
                     + f"  {loss:7.3f}  {row['latency_s']:8.2f}  {row['tokens_generated']:6d}{mark}")
    return "\n".join(lines)


def format_details(result: dict) -> str:
    """Tests of the best against the others, forgetting, warnings and the summary line."""
    lines = [f"(* best on {result['primary']}; 95% bootstrap intervals; {result['n_examples']} examples)"]
    for c in result["comparisons"]:
        verdict = "significant" if c["significant"] else "not significant"
        lines.append(f"{c['a']} vs {c['b']}: {c['diff']:+.1%} [{c['diff_low']:+.1%}, {c['diff_high']:+.1%}], "
                     f"{c['test']} p={c['p']:.3g} ({verdict})")
    lines += format_constraint(result)
    for run, f in result["forgetting"].items():
        lines += format_forgetting(run, f)
    lines += [f"warning: {w}" for w in result["warnings"]]
    lines.append("")
    lines.append(result["summary"])
    return "\n".join(lines)


def format_constraint(result: dict) -> list[str]:
    """One line per row answered under a constraint: how often its answer, decoded without it, broke it."""
    lines = []
    for row in result["systems"]:
        c = row.get("constraint")
        if c:
            lines.append(f"constrained to {c['label']}: {row_label(row['system'])} unconstrained would have "
                         f"given {c['invalid_unconstrained']} invalid answer(s) of {c['n']} ({c['invalid_share']:.0%})")
    return lines


def output_dir(targets: list[str], out: Path | None) -> Path:
    """Where eval.json and report.html go: --out, else the run folder when one run is evaluated."""
    from tunery.runfolder import is_run_folder

    if out is not None:
        return out
    runs = [t for t in targets if is_run_folder(Path(t).expanduser())]
    return Path(runs[0]).expanduser() if len(runs) == 1 else Path("tunery-eval")


def write_and_print(result: dict, targets: list[str], out: Path | None, as_json: bool) -> None:
    from tunery.eval.report_html import finite, write_outputs
    from tunery.runfolder import RunFolder

    metrics = {run: RunFolder(Path(run)).read_metrics() for run in result["targets"]}
    json_path, html_path = write_outputs(result, output_dir(targets, out), metrics)
    from tunery.tracking.eval_report import track_eval

    track_eval(result, json_path, _log)  # runs trained with `tracking:` get the figures there too
    if as_json:
        print(json.dumps(finite(result), indent=2))
        return
    if result.get("kind") == "pairs":
        from tunery.eval.pairs import format_pairs_details, format_pairs_table

        print(format_pairs_table(result))
        print(format_pairs_details(result))
    elif result.get("kind") == "text":
        from tunery.eval.text import format_text_table

        print(format_text_table(result))
    else:
        print(format_table(result))
        print(format_details(result))
    print(f"\nwrote {json_path} and {html_path}")


def grader_specs(options: list[str] | None) -> list[str]:
    """`--graders` values as specs: each option may hold a comma list (`exact,json`)."""
    from tunery.graders import split_spec_list

    return [spec for text in options or [] for spec in split_spec_list(text)]


def parse_baselines(text: str) -> tuple[str, ...]:
    """`--baselines zero,few` -> ("zero", "few"); `none` or nothing -> ()."""
    return () if text.strip() in ("", "none") else tuple(p.strip() for p in text.split(",") if p.strip())


def format_gate(gate: dict) -> str:
    """One PASS/FAIL line per threshold, then the verdict."""
    lines = []
    for check in gate["checks"]:
        mean = "not scored" if check["mean"] is None else f"{check['mean']:.3f}"
        lines.append(f"{'PASS' if check['passed'] else 'FAIL'}  {check['grader']} >= {check['threshold']:g}: "
                     f"{mean} ({gate['system']})")
    lines.append(f"gate {'passed' if gate['passed'] else 'FAILED'}")
    return "\n".join(lines)


def run_eval(targets: list[str], data: str, opts, out: Path | None, as_json: bool) -> int:
    """`tunery eval` with its `EvalOptions`: evaluate, write eval.json + report.html, print the table
    (or the JSON). Exit code 1 when a --gate fails."""
    from tunery.eval.evaluate import evaluate

    result = evaluate(targets, data, opts, log=_log)
    write_and_print(result, targets, out, as_json)
    gate = result.get("gate")
    if gate is None:
        return 0
    print(format_gate(gate), file=sys.stderr if as_json else sys.stdout, flush=True)  # stdout stays JSON
    return 0 if gate["passed"] else 1


def run_advise(opts, as_json: bool) -> int:
    """`tunery advise` with its `AdviseOptions`: prompting vs retrieval (vs a tuned run) on held-out
    examples, one sentence."""
    from tunery.eval.advise import split_for_advice
    from tunery.eval.evaluate import evaluate

    items, pool, pool_files = split_for_advice(opts.data, opts.train, opts.holdout, opts.limit, opts.evaluation.seed)
    target = [opts.run] if opts.run else [opts.model]
    result = evaluate(target, opts.data, opts.evaluation, log=_log, items=items, pool=pool, pool_files=pool_files)
    task, suggested = recommend_for(items, pool)
    if as_json:
        from tunery.eval.recommend import as_json as suggestions_json
        from tunery.eval.report_html import finite

        print(json.dumps(finite(result | {"recommendation": suggestions_json(task, suggested)}), indent=2))
    else:
        from tunery.eval.recommend import format_suggestions

        print(format_table(result))
        print(format_details(result))
        print(format_suggestions(task, suggested))
    return 0


def recommend_for(items, pool):
    """(task profile, suggestions) from every reference answer `tunery advise` was given."""
    from tunery.eval.items import split_example
    from tunery.eval.recommend import profile, suggestions

    answers = [split_example(e)[1].content for e in pool] + [i.reference for i in items]
    task = profile(answers)
    return task, suggestions(task)


def run_compare(runs: list[Path], as_json: bool, html: Path | None) -> int:
    """`tunery compare`: runs side by side, config differences marked."""
    from tunery.eval.compare import compare_runs, format_compare, render_compare_html

    if len(runs) < 2:
        raise TuneryError("compare needs at least two run folders")
    table = compare_runs([str(r) for r in runs])
    if html is not None:
        from tunery.atomic import write_text_atomic

        write_text_atomic(html, render_compare_html(table))
    if as_json:
        print(json.dumps(table, indent=2, default=str))
    else:
        print(format_compare(table, color=sys.stdout.isatty()))
        if html is not None:
            print(f"\nwrote {html}")
    return 0
