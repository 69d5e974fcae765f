"""Which guard keeps what the base model knew? Task score and forgetting probe for each setting.

    python bench/forgetting.py [--tasks quickstart,routing,arithmetic] [--settings plain,rank4,...]
                               [--out bench/results/forgetting.json]

For every task (an example of this repository, trained as shipped) and every setting (overrides on top
of it), one `tunery train` process; then one `tunery eval` per task over all its runs (zero-shot, no
prompting baselines), which scores the task's held-out examples with its grader and the forgetting
probe for the base and every run. Printed: the task score and the probe with 95% intervals, the
probe's change against the base with its paired test, the training time against the plain run (of
the same call only: timings of different sittings are not comparable) and the tokens processed against
the plain run (the load-free measure of training cost). The results file keeps the rows of earlier
calls: a setting measured again replaces its row, new settings are added.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = {  # name: (config, held-out file, grader)
    "quickstart": ("examples/quickstart/config.yaml", "examples/quickstart/heldout.jsonl", "json_match"),
    "routing": ("examples/routing/config.yaml", "examples/routing/heldout.jsonl", "exact"),
    "arithmetic": ("examples/rl/sft.yaml", "examples/rl/heldout.jsonl", "numeric"),
}


def on_top(share: float, weight: float | str | None = None, answers: int | None = None,
           seed: int | None = None) -> list[str]:
    """Self-replay at `share` on top of the task's steps, each conversation weighed as `weight` task
    examples (`example`: one; None: by its tokens), its answer cut after `answers` tokens (None: whole),
    with `seed` (None: the config's)."""
    settings = ["data.replay=self", f"data.replay_share={share}", "data.replay_mode=extend"]
    settings += [f"data.replay_weight={weight}"] if weight is not None else []
    settings += [f"data.replay_answer_tokens={answers}"] if answers is not None else []
    return settings + ([f"training.seed={seed}"] if seed is not None else [])


SETTINGS = {
    "plain": [],
    "rank4": ["lora.rank=4", "lora.alpha=8"],
    "half-steps": ["training.max_steps=HALF"],
    "replay10": ["data.replay=self", "data.replay_share=0.1"],
    "replay25": ["data.replay=self", "data.replay_share=0.25"],
    "replay25-kl0.1": ["data.replay=self", "data.replay_share=0.25", "training.kl_to_base=0.1"],
    "replay25-kl1": ["data.replay=self", "data.replay_share=0.25", "training.kl_to_base=1.0"],
    # replay on top of the task's steps (data.replay_mode extend): 1.25x the steps at 20%
    "replay10x": on_top(0.1),
    "replay20x": on_top(0.2),
    # the same as replay20x, named apart for the rows run after the pool's order took the kinds in turn
    "replay20x-strat": on_top(0.2),
    # replay weighed per example in the loss (data.replay_weight: example) instead of per token
    "replay20x-ex": on_top(0.2, "example"),
    "replay10x-ex": on_top(0.1, "example"),
    "replay20x-w4": on_top(0.2, 4),
    "replay15x-w4": on_top(0.15, 4),
    # the recipe and plain again with another seed: is the quickstart's result the seed's?
    "plain-seed2": ["training.seed=2"],
    "replay15x-w4-seed2": on_top(0.15, 4, seed=2),
    "replay20x-w4-seed2": on_top(0.2, 4, seed=2),
    # the recipes with each replay answer cut after its first N tokens (data.replay_answer_tokens: -aN)
    "replay15x-w4-a32": on_top(0.15, 4, answers=32),
    "replay20x-w4-a32": on_top(0.2, 4, answers=32),
    "replay20x-w4-a16": on_top(0.2, 4, answers=16),
    "replay15x-w4-a16": on_top(0.15, 4, answers=16),
    "replay15x-w4-a16-seed2": on_top(0.15, 4, answers=16, seed=2),
    "replay10x-w8-a16": on_top(0.1, 8, answers=16),
    "replay10x-w8-a16-seed2": on_top(0.1, 8, answers=16, seed=2),
    "replay20x-w4-a8": on_top(0.2, 4, answers=8),
    "replay15x-w4-a32-seed2": on_top(0.15, 4, answers=32, seed=2),
    "replay20x-w4-a16-seed2": on_top(0.2, 4, answers=16, seed=2),
    "replay10x-w8": on_top(0.1, 8),
    "replay20x-ex-kl1": [*on_top(0.2, "example"), "training.kl_to_base=1.0"],
    "replay20x-kl0.1": [*on_top(0.2), "training.kl_to_base=0.1"],
    "replay20x-kl1": [*on_top(0.2), "training.kl_to_base=1.0"],
    "rank4-replay20x": ["lora.rank=4", "lora.alpha=8", *on_top(0.2)],
    "rank4-replay20x-kl1": ["lora.rank=4", "lora.alpha=8", *on_top(0.2), "training.kl_to_base=1.0"],
}
# The plain run's adapter with its update scaled afterwards (LoRA B x s: the weights s of the way from
# the base to the tuned model), no training of its own: weight interpolation as a guard.
for _scale in ("0.75", "0.5", "0.25"):
    SETTINGS[f"plain-scale{_scale}"] = [f"SCALE={_scale}"]
COMMON = ["eval.graders=[]", "training.eval_every=1000"]  # no grader scoring inside training: eval does it


def tunery(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunery.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, check=False)


def half_steps(config: str) -> str:
    from tunery.config.load import load_config

    return str(max(1, load_config(REPO / config).config.training.max_steps // 2))


def scaled_copy(task: str, setting: str, work: Path) -> dict:
    """The plain run of `task` (trained before, in `work`) copied with its LoRA update scaled by the
    setting's factor; its training time and tokens are the plain run's. Written whole in one rename;
    what it replaces must be a run folder tunery made (its marker), never anything else."""
    import shutil

    from safetensors.torch import load_file, save_file

    from tunery.atomic import atomic_dir
    from tunery.runfolder import check_run_target

    factor = float(SETTINGS[setting][0].removeprefix("SCALE="))
    plain, name = work / "runs" / f"{task}-plain", f"{task}-{setting}"
    if not (plain / "run.json").is_file():
        raise SystemExit(f"{setting} scales the plain run of {task}: train `plain` first")
    target = work / "runs" / name
    check_run_target(target, resume=False, overwrite=True)  # a foreign folder there is refused, untouched
    with atomic_dir(target) as tmp:
        shutil.copytree(plain, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints", "cache"))
        weights = tmp / "adapter" / "adapter_model.safetensors"
        tensors = {k: v * factor if "lora_B" in k else v for k, v in load_file(str(weights)).items()}
        save_file(tensors, str(weights), metadata={"format": "pt"})
    metrics = [json.loads(line) for line in (plain / "metrics.jsonl").read_text().splitlines()]
    info = json.loads((plain / "run.json").read_text())
    return {"run": f"runs/{name}", "task": task, "setting": setting, "overrides": SETTINGS[setting],
            "wall_s": 0.0, "train_s": [m for m in metrics if m.get("kind") == "train"][-1]["elapsed_s"],
            "steps": info["total_steps"], "tokens": info["tokens"]}


def train(task: str, setting: str, work: Path) -> dict:
    if SETTINGS[setting][:1] and SETTINGS[setting][0].startswith("SCALE="):
        return scaled_copy(task, setting, work)
    config, _, _ = TASKS[task]
    overrides = [o.replace("HALF", half_steps(config)) for o in SETTINGS[setting]]
    name = f"{task}-{setting}"
    started = time.monotonic()
    proc = tunery("train", str(REPO / config), *overrides, *COMMON, f"output.name={name}", "output.dir=runs",
                  "--overwrite", cwd=work)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    metrics = [json.loads(line) for line in (work / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if m.get("kind") == "train"]
    info = json.loads((work / "runs" / name / "run.json").read_text())
    return {"run": f"runs/{name}", "task": task, "setting": setting, "overrides": overrides,
            "wall_s": round(time.monotonic() - started, 1), "train_s": steps[-1]["elapsed_s"],
            "steps": info["total_steps"], "tokens": info["tokens"]}


def plan_cost(task: str, setting: str) -> dict:
    """The tokens a setting's run of `task` would process over its whole step plan, without training: the
    data's (every row whole) and the model's (a prefix that rows of a piece share, once), from the same
    rows, steps and pieces as `tunery train` (self-replay's answers from the cache, made once if missing)."""
    from tunery.config.load import load_config
    from tunery.trainers import loop
    from tunery.trainers.run import prepare

    config, _, _ = TASKS[task]
    overrides = [o.replace("HALF", half_steps(config)) for o in SETTINGS[setting]]
    s = prepare(load_config(REPO / config, [*overrides, *COMMON]).config, log=lambda _text: None)
    pieces = [p for step in range(s.plan.total_steps) for p in loop.step_pieces(s, step, dry=True)]
    model, data = s.method.model_tokens(pieces)
    return {"task": task, "setting": setting, "steps": s.plan.total_steps, "data_tokens": data, "model_tokens": model}


def plan_table(rows: list[dict]) -> str:
    """Each setting's tokens against its task's first row (plain, when the call names it first)."""
    lines = [f"{'task':<12}{'setting':<22}{'steps':>6}{'data tokens':>13}{'model tokens':>14}"
             f"{'data x plain':>14}{'model x plain':>15}"]
    first: dict[str, dict] = {}
    for r in rows:
        ref = first.setdefault(r["task"], r)
        lines.append(f"{r['task']:<12}{r['setting']:<22}{r['steps']:>6}{r['data_tokens']:>13,}{r['model_tokens']:>14,}"
                     f"{r['data_tokens'] / ref['data_tokens']:>14.2f}{r['model_tokens'] / ref['model_tokens']:>15.2f}")
    return "\n".join(lines)


def plain_tokens(task: str, runs: list[dict], work: Path) -> int | None:
    """Tokens the plain run of `task` processed: from this call's runs, else from its run folder in `work`
    (a load-free stand-in for training time: the forward and backward passes scale with them)."""
    run = next((r for r in runs if r["setting"] == "plain" and r.get("tokens")), None)
    if run:
        return run["tokens"]
    info = work / "runs" / f"{task}-plain" / "run.json"
    return json.loads(info.read_text())["tokens"] if info.is_file() else None


def evaluate(task: str, runs: list[dict], work: Path) -> dict:
    _, heldout, grader = TASKS[task]
    proc = tunery("eval", *[r["run"] for r in runs], "--data", str(REPO / heldout), "--graders", grader,
                  "--baselines", "zero", "--json", "--out", f"eval-{task}", cwd=work)
    if proc.returncode != 0:
        raise SystemExit(f"eval of {task} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def rows_of(task: str, runs: list[dict], result: dict, work: Path) -> list[dict]:
    _, _, grader = TASKS[task]
    by_model = {r["system"]["model"]: r for r in result["systems"] if r["system"]["prompting"] == "zero-shot"}
    base = next(r for r in result["systems"] if not r["system"]["tuned"])
    plain_s = next((r["train_s"] for r in runs if r["setting"] == "plain"), None)  # same sitting only
    plain_tok = plain_tokens(task, runs, work)
    out = [{"task": task, "setting": "base", "score": base["scores"][grader], "probe": None}]
    for run in runs:
        key = next(k for k in by_model if k.endswith(run["run"]))
        forgetting = next(v for k, v in result["forgetting"].items() if k.endswith(run["run"]))
        out.append(run | {"score": by_model[key]["scores"][grader], "probe_before": forgetting["before"],
                          "probe": forgetting["after"], "probe_test": forgetting["test"],
                          "by_kind": forgetting.get("by_kind"),
                          "time_ratio": round(run["train_s"] / plain_s, 2) if plain_s else None,
                          "tokens_ratio": round(run["tokens"] / plain_tok, 2)
                          if plain_tok and run.get("tokens") else None})
    return out


def fmt_ci(s: dict | None) -> str:
    return "" if s is None else f"{s['mean']:.1%} [{s['low']:.1%}, {s['high']:.1%}]"


def table(rows: list[dict]) -> str:
    width = max([15] + [len(r["setting"]) for r in rows])  # the setting column fits the longest name
    lines = [f"{'task':<11} {'setting':<{width}} {'task score [95% CI]':<26} {'probe [95% CI]':<26} "
             f"{'probe change (p)':<20} {'train s':>7} {'x plain':>7} {'tokens x plain':>14}"]
    for r in rows:
        if r["setting"] == "base":
            before = next((x["probe_before"] for x in rows if x["task"] == r["task"] and x.get("probe_before")), None)
            lines.append(f"{r['task']:<11} {'base':<{width}} {fmt_ci(r['score']):<26} {fmt_ci(before):<26}")
            continue
        test = r["probe_test"]
        change = f"{test['diff']:+.1%} (p={test['p']:.2g})"
        lines.append(f"{r['task']:<11} {r['setting']:<{width}} {fmt_ci(r['score']):<26} {fmt_ci(r['probe']):<26} "
                     f"{change:<20} {r['train_s']:>7.0f} {_ratio(r.get('time_ratio')):>7} "
                     f"{_ratio(r.get('tokens_ratio')):>14}")
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def merged(old: list[dict], new: list[dict]) -> list[dict]:
    """The rows of an earlier results file with this call's rows added: a (task, setting) measured again
    replaces its old row in place, every other old row is kept, new ones come after their task's rows."""
    key = lambda r: (r["task"], r["setting"])  # noqa: E731
    fresh = {key(r): r for r in new}
    rows = [fresh.pop(key(r), r) for r in old]
    for row in new:
        if key(row) in fresh:
            last = max((i for i, r in enumerate(rows) if r["task"] == row["task"]), default=len(rows) - 1)
            rows.insert(last + 1, fresh.pop(key(row)))
    return rows


def with_tokens(rows: list[dict], work: Path) -> list[dict]:
    """Rows measured before the tokens were recorded get them (and their ratio to plain) from their run
    folders in `work`, where those still exist; rows are changed in place and returned."""
    def tokens_of(run: str) -> int | None:
        info = work / run / "run.json"
        return json.loads(info.read_text()).get("tokens") if info.is_file() else None

    for row in rows:
        if row["setting"] == "base" or row.get("tokens_ratio") is not None:
            continue
        tokens, plain = tokens_of(row["run"]), tokens_of(f"runs/{row['task']}-plain")
        if tokens and plain:
            row["tokens"], row["tokens_ratio"] = tokens, round(tokens / plain, 2)
    return rows


def write_json_atomic(path: Path, data: dict) -> None:
    from tunery.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunery-forgetting"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "forgetting.json")
    parser.add_argument("--threads", type=int, default=None,
                        help="training.threads for every run (1 on a shared machine; results do not depend on it)")
    parser.add_argument("--stage", choices=["all", "train", "eval", "table", "plan"], default="all",
                        help="train only (runs.json in --work), evaluate the --settings trained before, or both; "
                        "table: print every row of --out (filling in the tokens of rows that lack them from "
                        "their run folders in --work); plan: the tokens each setting's step plan processes, "
                        "against the first setting's (name plain first), without training")
    args = parser.parse_args()
    if args.threads:
        COMMON.append(f"training.threads={args.threads}")
    args.work.mkdir(parents=True, exist_ok=True)
    started, rows = time.monotonic(), []
    earlier = json.loads(args.out.read_text()) if args.out.is_file() else {}  # kept: rows are only added
    if args.stage == "table":
        print(table(with_tokens(earlier["rows"], args.work)))
        write_json_atomic(args.out, earlier | {"rows": earlier["rows"]})
        return
    if args.stage == "plan":
        print(plan_table([plan_cost(t, s) for t in args.tasks.split(",") for s in args.settings.split(",")]))
        return
    trained_file = args.work / "runs.json"
    trained = json.loads(trained_file.read_text()) if trained_file.is_file() else {}  # runs of earlier calls
    settings = args.settings.split(",")
    for task in args.tasks.split(","):
        if args.stage != "eval":
            for setting in settings:
                print(f"training {task} / {setting} ...", flush=True)
                run = train(task, setting, args.work)
                trained[task] = [r for r in trained.get(task, []) if r["setting"] != setting] + [run]
                trained_file.write_text(json.dumps(trained, indent=2))
        if args.stage != "train":
            runs = [r for r in trained.get(task, []) if r["setting"] in settings]  # what this call names
            missing = sorted(set(settings) - {r["setting"] for r in runs})
            if missing:
                raise SystemExit(f"{task}: no trained run for {', '.join(missing)} in {trained_file}")
            print(f"evaluating {task} ({len(runs)} runs) ...", flush=True)
            rows += rows_of(task, runs, evaluate(task, runs, args.work), args.work)
            write_json_atomic(args.out, earlier | {"rows": merged(earlier.get("rows", []), rows)})  # so far
    if args.stage == "train":
        return
    print()
    print(table(rows))
    minutes = round((time.monotonic() - started) / 60, 1)
    sittings = earlier.get("sittings", []) + [{"tasks": args.tasks, "settings": args.settings, "minutes": minutes}]
    write_json_atomic(args.out, earlier | {"rows": merged(earlier.get("rows", []), rows), "sittings": sittings})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
