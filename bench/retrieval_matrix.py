"""Defaults from evidence: a small one-factor-at-a-time matrix around tunery's defaults, per task, scored
against base retrieval on held-out examples.

    OMP_NUM_THREADS=1 python bench/retrieval_matrix.py [--tasks intents,quickstart] [--settings default,rag,...]
                                                       [--stage all|train|eval] [--out bench/results/retrieval_matrix.json]
    OMP_NUM_THREADS=1 python bench/retrieval_matrix.py --tasks intents --confirm lr-high

For every task (an example of this repository, its config as shipped) and every setting (overrides on
top of it), one `tunery train` process with the same seed and `training.threads=1`. Then one
`tunery eval` per run (the tuned row; a retrieval-trained run also gives its row without retrieval),
one for the base model's retrieval row (BM25, k=3, shots from the task's training file), and one
`tuned + retrieval` row (eval-time BM25) for the default run. Classification answers are constrained
to the training label set (`--choices auto`). All rows answer the same held-out examples greedily, so
per-example scores pair up: printed are each row's score with its 95% bootstrap interval and the paired
test (McNemar exact for pass/fail graders) of the best tuned setting against base retrieval.

Equal compute: what is held equal is steps x tokens, the tokens that go through forward and backward.
Every plain setting trains the same steps on the same examples in the same order; the retrieval-trained
setting (`rag`) carries three shots per example, about 4x the tokens each, so it trains a quarter of the
steps (a quarter epoch); `rag-same-steps` (4x the tokens, not in the default matrix) gives it the
default's steps. `epochs-half` / `epochs-double` / `epochs-triple` change the budget on purpose (0.5x / 2x / 3x, the last
tunery's own default of 3 epochs): that is the
factor they test. The table reports each run's trained tokens, so the cost is in view.
A run already trained with the same overrides (runs.json in --work) is reused: the bench can be run a
setting at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
BASE_MODEL = "smollm2-135m-instruct"
TASKS = {  # name: (config, held-out file, training file, grader, extra eval options)
    "intents": ("examples/intents/config.yaml", "examples/intents/heldout.jsonl", "examples/intents/train.jsonl",
                "exact", ["--choices", "auto", "--max-new-tokens", "8"]),
    "rewrite": ("examples/rewrite/config.yaml", "examples/rewrite/heldout.jsonl", "examples/rewrite/train.jsonl",
                "exact", ["--max-new-tokens", "24"]),
    "quickstart": ("examples/quickstart/config.yaml", "examples/quickstart/heldout.jsonl",
                   "examples/quickstart/train.jsonl", "json_match", ["--max-new-tokens", "40"]),
}
# Further held-out sets per task, used once each: `--confirm SETTING` tests the setting the matrix chose (on
# the held-out set, among many rows) against base retrieval on examples that played no part in choosing.
# intents: confirm.jsonl first (180, p=0.058), then confirm2.jsonl (360 more, drawn after that result for
# power); the test is reported per set and on all confirmation examples together.
CONFIRM = {"intents": ["examples/intents/confirm.jsonl", "examples/intents/confirm2.jsonl"]}
RAG = ["data.retrieval={k: 3, method: bm25}", "data.max_length=512"]
SETTINGS = {  # one factor at a time around the task's config; SCALE=f multiplies its training budget
    "default": [],
    "lr-low": ["training.lr=1e-4"],
    "lr-high": ["training.lr=5e-4"],
    "epochs-half": ["SCALE=0.5"],
    "epochs-double": ["SCALE=2"],
    "epochs-triple": ["SCALE=3"],  # tunery's own default budget (training.epochs 3) where the task runs one epoch
    "rank4": ["lora.rank=4", "lora.alpha=8"],  # alpha / rank = 2 as at rank 16 (alpha 32)
    "dropout0": ["lora.dropout=0"],
    "rag": [*RAG, "SCALE=0.25"],  # ~4x the tokens per example, a quarter of the steps: equal tokens
    "rag-same-steps": RAG,  # the default's steps with shots: ~4x its tokens (not in the default matrix)
}
MATRIX = [s for s in SETTINGS if s not in ("rag-same-steps", "epochs-triple")]  # the two costliest: on request
COMMON = ["eval.graders=[]", "training.eval_every=1000", "training.threads=1"]  # eval does the scoring


def tunery(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "tunery.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, check=False, env=env)


def scaled(config: str, factor: float) -> str:
    """`training.max_steps=N` or `training.epochs=E`: the config's budget times `factor`."""
    from tunery.config.load import load_config

    training = load_config(REPO / config).config.training
    if training.max_steps is not None:
        return f"training.max_steps={max(1, round(training.max_steps * factor))}"
    return f"training.epochs={training.epochs * factor:g}"


def overrides_for(task: str, setting: str) -> list[str]:
    config = TASKS[task][0]
    return [scaled(config, float(o[6:])) if o.startswith("SCALE=") else o for o in SETTINGS[setting]]


def write_json(path: Path, data) -> None:
    """Atomically (`tunery.atomic`): a reader never sees half a file."""
    from tunery.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def trained_tokens(steps: list[dict]) -> int:
    """About how many tokens went through training: each step's throughput times its duration."""
    total, before = 0.0, 0.0
    for m in steps:
        total += m.get("tokens_per_s", 0) * (m["elapsed_s"] - before)
        before = m["elapsed_s"]
    return round(total)


def train(task: str, setting: str, work: Path) -> dict:
    overrides, name = overrides_for(task, setting), f"{task}-{setting}"
    started = time.monotonic()
    proc = tunery("train", str(REPO / TASKS[task][0]), *overrides, *COMMON, f"output.name={name}",
                  "output.dir=runs", "--overwrite", cwd=work)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    metrics = [json.loads(line) for line in (work / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if m.get("kind") == "train"]
    return {"run": f"runs/{name}", "task": task, "setting": setting, "overrides": overrides,
            "steps": steps[-1]["step"], "tokens": trained_tokens(steps),
            "wall_s": round(time.monotonic() - started, 1)}


def evaluate(task: str, targets: list[str], baselines: str, out: str, work: Path, data: str | None = None) -> dict:
    """One `tunery eval` call on the task's held-out file (or `data`); its eval.json is kept in
    `work/out` (reused when there)."""
    cached = work / out / "eval.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    _, heldout, train_file, grader, extra = TASKS[task]
    proc = tunery("eval", *targets, "--data", str(REPO / (data or heldout)), "--train", str(REPO / train_file),
                  "--graders", grader, "--baselines", baselines, "--probe", "none", *extra, "--json",
                  "--out", out, cwd=work)
    if proc.returncode != 0:
        raise SystemExit(f"eval {targets} of {task} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def collect_rows(task: str, runs: list[dict], work: Path) -> list[dict]:
    """Every row of every eval call of a task: {setting, system, scores, constraint, per-example scores}."""
    grader = TASKS[task][3]
    calls = [("base", [BASE_MODEL], "rag", f"eval-{task}-base-rag")]
    calls += [(r["setting"], [r["run"]], "tuned+rag" if r["setting"] == "default" else "none",
               f"eval-{task}-{r['setting']}") for r in runs]
    rows = []
    for setting, targets, baselines, out in calls:
        print(f"evaluating {task} / {setting} ...", flush=True)
        result = evaluate(task, targets, baselines, out, work)
        run = next((r for r in runs if r["setting"] == setting), {})
        for system in result["systems"]:
            rows.append({"task": task, "setting": setting, "row": system["system"]["name"],
                         "prompting": system["system"]["prompting"], "tuned": system["system"]["tuned"],
                         "score": system["scores"][grader], "loss": system.get("loss"),
                         "constraint": system.get("constraint"), "steps": run.get("steps"),
                         "tokens": run.get("tokens"), "overrides": run.get("overrides"),
                         "per_example": [e["scores"].get(grader) for e in system["per_example"]]})
    return rows


def confirm(task: str, setting: str, trained: dict, work: Path) -> list[dict]:
    """The chosen setting's tuned row against base retrieval on each of the task's confirmation sets,
    then on all of them together."""
    run = next(r for r in trained[task] if r["setting"] == setting)
    grader = TASKS[task][3]
    pick = lambda result, prompting: next(s for s in result["systems"]  # noqa: E731
                                          if s["system"]["prompting"] == prompting)
    per = lambda system: [e["scores"].get(grader) for e in system["per_example"]]  # noqa: E731
    found, mine_all, theirs_all = [], [], []
    for data in CONFIRM[task]:
        print(f"confirming {task} / {setting} on {data} ...", flush=True)
        stem = Path(data).stem
        base = evaluate(task, [BASE_MODEL], "rag", f"{stem}-{task}-base-rag", work, data)
        tuned = evaluate(task, [run["run"]], "none", f"{stem}-{task}-{setting}", work, data)
        mine, theirs = per(pick(tuned, "zero-shot")), per(pick(base, "retrieval"))
        mine_all, theirs_all = mine_all + mine, theirs_all + theirs
        found.append(_confirmation(task, setting, data, run, mine, theirs))
    if len(found) > 1:
        found.append(_confirmation(task, setting, " + ".join(CONFIRM[task]), run, mine_all, theirs_all))
    return found


def _confirmation(task: str, setting: str, data: str, run: dict, mine: list, theirs: list) -> dict:
    from tunery.eval.stats import bootstrap_ci, compare_paired

    return {"task": task, "setting": setting, "data": data, "overrides": run["overrides"],
            "tuned": bootstrap_ci(mine).to_json(), "base_retrieval": bootstrap_ci(theirs).to_json(),
            **compare_paired(mine, theirs, seed=0)}


def fmt_diff(t: dict) -> str:
    """A paired test's difference with its interval: `+8.3% [+0.6%, +16.7%]`."""
    return f"{t['diff']:+.1%} [{t['diff_low']:+.1%}, {t['diff_high']:+.1%}]"


def fmt_confirmation(c: dict) -> str:
    return (f"{c['task']}: confirmed on {c['data']} ({c['tuned']['n']} examples never used to choose): "
            f"{c['setting']} {fmt_ci(c['tuned'])} vs base retrieval {fmt_ci(c['base_retrieval'])}: "
            f"{fmt_diff(c)}, {c['test']} p={c['p']:.3g} "
            f"({c.get('wins_a', '?')} won, {c.get('wins_b', '?')} lost)")


def verdict(task: str, rows: list[dict]) -> dict | None:
    """The paired test of the best tuned row (by mean) against base retrieval on the same examples."""
    from tunery.eval.stats import compare_paired

    mine = [r for r in rows if r["task"] == task]
    base = next((r for r in mine if not r["tuned"] and r["prompting"] == "retrieval"), None)
    tuned = [r for r in mine if r["tuned"] and r["score"]["n"]]
    if base is None or not tuned:
        return None
    best = max(tuned, key=lambda r: r["score"]["mean"])
    test = compare_paired(best["per_example"], base["per_example"], seed=0)
    return {"task": task, "best": f"{best['setting']}: {best['row']}", "best_score": best["score"],
            "base_retrieval": base["score"], **test}


def against_default(task: str, rows: list[dict]) -> None:
    """Each tuned row's paired test against the default run's plain tuned row (in place: `vs_default`)."""
    from tunery.eval.stats import compare_paired

    mine = [r for r in rows if r["task"] == task]
    default = next((r for r in mine if r["setting"] == "default" and r["prompting"] == "zero-shot"), None)
    for r in mine:
        if default is not None and r["tuned"] and r is not default:
            r["vs_default"] = compare_paired(r["per_example"], default["per_example"], seed=0)


def fmt_test(t: dict | None) -> str:
    return "" if not t else f"{t['diff']:+.1%} (p={t['p']:.2g})"


def fmt_ci(s: dict) -> str:
    return f"{s['mean']:.1%} [{s['low']:.1%}, {s['high']:.1%}]"


def table(rows: list[dict], verdicts: list[dict]) -> str:
    lines = [f"{'task':<10} {'setting':<14} {'row':<48} {'score [95% CI]':<24} {'vs default':<18} {'invalid':>7} "
             f"{'tokens':>7}"]
    for r in rows:
        invalid = r["constraint"]["invalid_unconstrained"] if r.get("constraint") else ""
        lines.append(f"{r['task']:<10} {r['setting']:<14} {r['row'][:48]:<48} {fmt_ci(r['score']):<24} "
                     f"{fmt_test(r.get('vs_default')):<18} {invalid!s:>7} {r['tokens'] or '':>7}")
    for v in verdicts:
        lines.append(f"\n{v['task']}: best tuned ({v['best']}) {fmt_ci(v['best_score'])} vs base retrieval "
                     f"{fmt_ci(v['base_retrieval'])}: {fmt_diff(v)}, "
                     f"{v['test']} p={v['p']:.3g}{' (significant)' if v['significant'] else ' (not significant)'}")
    return "\n".join(lines)


def markdown(rows: list[dict], verdicts: list[dict]) -> str:
    """The same table for docs/retrieval.md."""
    lines = ["| task | setting | row | score [95% CI] | vs default tuned (McNemar p) | invalid unconstrained | "
             "answer loss | steps | tokens trained |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        invalid = r["constraint"]["invalid_unconstrained"] if r.get("constraint") else ""
        loss = f"{r['loss']['loss']:.3f}" if r.get("loss") else ""
        lines.append(f"| {r['task']} | {r['setting']} | {r['row']} | {fmt_ci(r['score'])} | "
                     f"{fmt_test(r.get('vs_default'))} | {invalid} | {loss} | "
                     f"{r['steps'] or ''} | {r['tokens'] or ''} |")
    for v in verdicts:
        lines.append(f"\n{v['task']}: best tuned row ({v['best']}) {fmt_ci(v['best_score'])} against base retrieval "
                     f"{fmt_ci(v['base_retrieval'])}: {fmt_diff(v)}, "
                     f"{v['test']} p={v['p']:.3g} ({v.get('wins_a', '?')} won, {v.get('wins_b', '?')} lost).")
    return "\n".join(lines)


def train_all(tasks: list[str], settings: list[str], work: Path) -> dict:
    trained_file = work / "runs.json"
    trained = json.loads(trained_file.read_text()) if trained_file.is_file() else {}
    for task in tasks:
        done = {r["setting"]: r for r in trained.get(task, [])}
        for setting in settings:
            if setting in done and done[setting]["overrides"] == overrides_for(task, setting):
                continue
            print(f"training {task} / {setting} ...", flush=True)
            done[setting] = train(task, setting, work)
            trained[task] = list(done.values())
            write_json(trained_file, trained)
    return trained


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--settings", default=",".join(MATRIX))
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunery-retrieval-matrix"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "retrieval_matrix.json")
    parser.add_argument("--stage", choices=["all", "train", "eval"], default="all")
    parser.add_argument("--confirm", default=None, metavar="SETTING",
                        help="only test SETTING's trained run against base retrieval on each task's confirmation "
                        "set (CONFIRM), and add the result to --out")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tasks, settings = args.tasks.split(","), args.settings.split(",")
    if args.stage != "eval" and not args.confirm:  # a confirmation only evaluates runs trained before
        train_all(tasks, settings, args.work)
    if args.stage == "train":
        return
    trained = json.loads((args.work / "runs.json").read_text())
    if args.confirm:
        found = [c for task in tasks if task in CONFIRM for c in confirm(task, args.confirm, trained, args.work)]
        for c in found:
            print(fmt_confirmation(c))
        earlier = json.loads(args.out.read_text()) if args.out.is_file() else {}
        kept = [c for c in earlier.get("confirmations", []) if (c["task"], c["setting"]) not in
                {(f["task"], f["setting"]) for f in found}]
        write_json(args.out, earlier | {"confirmations": kept + found})
        return
    rows, verdicts = [], []
    for task in tasks:
        runs = [r for r in trained.get(task, []) if r["setting"] in settings]
        rows += collect_rows(task, runs, args.work)
        against_default(task, rows)
        v = verdict(task, rows)
        verdicts += [v] if v else []
    print()
    print(table(rows, verdicts))
    print()
    print(markdown(rows, verdicts))
    earlier = json.loads(args.out.read_text()) if args.out.is_file() else {}
    write_json(args.out, {"rows": rows, "verdicts": verdicts, "common": COMMON, "settings": SETTINGS,
                          "confirmations": earlier.get("confirmations", [])})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
