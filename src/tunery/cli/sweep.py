"""`tunery sweep`: build the plan from the config and the options, check every trial's config before
any runs, run the trials, and report."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tunery.config.load import load_config
from tunery.errors import TuneryError
from tunery.sweep import report
from tunery.sweep.runner import run_trials
from tunery.sweep.search import GridChooser, OptunaChooser
from tunery.sweep.space import as_override, check_space, grid_points, parse_axis
from tunery.sweep.state import Plan, open_sweep


def default_parallel() -> int:
    """One trial per two cores (each with its share of the threads): 1 on a 2-core machine."""
    return max(1, (os.cpu_count() or 1) // 2)


def run_sweep(config: Path, args: list[str], grid: bool, search: str | None, trials: int | None,
              parallel: int | None, out: Path | None, as_json: bool, overwrite: bool) -> int:
    if grid == bool(search):
        raise TuneryError("choose one way to pick the trials: --grid KEY=V1,V2 ... or --search optuna")
    if search not in (None, "optuna"):
        raise TuneryError(f"--search {search} is not known", fix="use --search optuna")
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if as_json else (lambda text: print(text, flush=True))
    if grid:
        axes = [parse_axis(a) for a in args]
        fixed = [as_override(k, v[0]) for k, v in axes if len(v) == 1]
        points = grid_points([(k, v) for k, v in axes if len(v) > 1])
        if not axes or len(points) < 2:
            raise TuneryError("--grid needs at least one key with two values or more, e.g. lora.rank=8,16")
    else:
        fixed, points = list(args), []
    cfg = load_config(config, fixed).config
    _check_measurable(cfg)
    if grid:
        for point in points:  # every trial's config is checked before the first one runs
            load_config(config, fixed + [as_override(k, v) for k, v in point.items()])
        space, count = points, len(points)
    else:
        check_space(cfg.sweep.params, cfg.sweep.first)
        for corner in ("low", "high"):
            load_config(config, fixed + [as_override(p.key, getattr(p, corner) if p.choices is None else p.choices[0])
                                         for p in cfg.sweep.params])
        space, count = [p.model_dump() for p in cfg.sweep.params], trials or cfg.sweep.trials
    folder = (out or Path(cfg.output.dir) / f"{cfg.output.name}-sweep").resolve()
    direction = "minimize" if cfg.sweep.metric == "val_loss" else "maximize"
    plan = Plan(str(config.resolve()), fixed, "grid" if grid else "optuna", cfg.sweep.metric, direction, space, count)
    state = open_sweep(folder, plan, overwrite)
    chooser = GridChooser(state) if grid else OptunaChooser(state, cfg.sweep)
    parallel = parallel or default_parallel()
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 and cfg.training.threads is None else None
    done = sum(t.state in ("finished", "pruned") for t in state.trials)
    say(f"sweep {folder}: {state.plan.trials} trials ({plan.mode}), {cfg.sweep.metric} "
        f"({'lower' if direction == 'minimize' else 'higher'} is better), {parallel} at a time"
        + (f"; resuming, {done} done" if done else ""))
    stopped = run_trials(state, chooser, parallel, threads, say)
    rows = report.rows_of(state)
    written = report.write_results(state, rows, (cfg.output.dir, cfg.output.name))
    if as_json:
        print(json.dumps(report.as_json(state, rows), indent=2))
    else:
        print(report.table(state, rows))
        print("wrote " + ", ".join(str(p) for p in written))
    if stopped:
        return stopped
    return 0 if any(r["state"] == "finished" for r in rows) else 1


def _check_measurable(cfg) -> None:
    """A sweep ranks trials by a figure measured during training: the validation loss needs validation
    examples."""
    if cfg.sweep.metric == "val_loss" and not cfg.data.validation and cfg.data.val_split == 0:
        raise TuneryError("the sweep ranks trials by validation loss, but the config has no validation examples",
                          fix="set data.validation or data.val_split (e.g. data.val_split=0.1)")
