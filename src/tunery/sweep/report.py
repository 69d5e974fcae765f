"""The results of a sweep, read from its trials' run folders: a table (results.md, printed), JSON
(results.json, `--json`), the metric against each swept setting (sweep.png), and the best trial's
config (best.yaml, ready for `tunery train`)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from tunery.atomic import atomic_file, write_text_atomic
from tunery.config.load import to_yaml
from tunery.sweep.state import SweepState
from tunery.sweep.trials import best_of, figures_of


def rows_of(state: SweepState) -> list[dict]:
    """One row per trial: its settings, state and figures as its run folder holds them."""
    rows = []
    for trial in state.trials:
        run = state.run_of(trial)
        info = run.read_info()
        value, best_step = best_of(figures_of(run.read_metrics(), state.plan.metric), state.plan.direction)
        rows.append({"trial": trial.name, "state": trial.state, "params": trial.params, "value": value,
                     "best_step": best_step, "steps": info.get("step"), "total_steps": info.get("total_steps"),
                     "elapsed_s": info.get("elapsed_s"), "run": str(run.root), "error": trial.error})
    return rows


def best_row(state: SweepState, rows: list[dict]) -> dict | None:
    """The finished trial with the best figure (pruned trials never win: they did not train to the end)."""
    done = [r for r in rows if r["state"] == "finished" and r["value"] is not None]
    if not done:
        return None
    sign = 1 if state.plan.direction == "minimize" else -1
    return min(done, key=lambda r: sign * r["value"])


def table(state: SweepState, rows: list[dict]) -> str:
    """A Markdown table; the best trial is marked with *."""
    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    best = best_row(state, rows)
    head = ["trial", "state", *keys, f"{state.plan.metric} (best)", "best step", "steps", "train time (s)"]
    body = []
    for r in rows:
        steps = f"{r['steps']}/{r['total_steps']}" if r["steps"] is not None else "-"
        body.append([r["trial"] + (" *" if r is best else ""), r["state"], *(_fmt(r["params"].get(k)) for k in keys),
                     "-" if r["value"] is None else f"{r['value']:.4f}", _fmt(r["best_step"]), steps,
                     _fmt(r["elapsed_s"])])
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def as_json(state: SweepState, rows: list[dict]) -> dict:
    best = best_row(state, rows)
    return {"sweep": str(state.folder), "mode": state.plan.mode, "metric": state.plan.metric,
            "direction": state.plan.direction, "best": best["trial"] if best else None, "trials": rows}


def write_results(state: SweepState, rows: list[dict], base_output: tuple[str, str]) -> list[Path]:
    """results.md, results.json, sweep.png (with matplotlib) and best.yaml; returns what was written."""
    written = [state.folder / "results.md", state.folder / "results.json"]
    write_text_atomic(written[0], f"# Sweep {state.folder.name}\n\n{table(state, rows)}\n")
    write_text_atomic(written[1], json.dumps(as_json(state, rows), indent=2) + "\n")
    if plot(state, rows, state.folder / "sweep.png"):
        written.append(state.folder / "sweep.png")
    best = best_row(state, rows)
    if best is not None:
        written.append(write_best_config(state, best, base_output))
    return written


def write_best_config(state: SweepState, best: dict, base_output: tuple[str, str]) -> Path:
    """The best trial's resolved config, with the output of the swept config (its name + `-best`)."""
    trial = next(t for t in state.trials if t.name == best["trial"])
    cfg = state.run_of(trial).read_config()
    cfg.output.dir, cfg.output.name = base_output[0], f"{base_output[1]}-best"
    header = (f"# best trial of the sweep {state.folder}: {trial.name}, {state.plan.metric} {best['value']:.6g}\n"
              f"# settings: {json.dumps(trial.params)}\n")
    path = state.folder / "best.yaml"
    write_text_atomic(path, header + to_yaml(cfg))
    return path


def plot(state: SweepState, rows: list[dict], path: Path) -> bool:
    """The metric against each swept setting, one panel each; pruned trials as grey crosses. False when
    matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    measured = [r for r in rows if r["value"] is not None]
    if not keys or not measured:
        return False
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        _panel(ax, key, measured, state.plan.metric)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    with atomic_file(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return True


def _panel(ax, key: str, rows: list[dict], metric: str) -> None:
    values = [r["params"].get(key) for r in rows]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    labels = sorted({str(v) for v in values})
    xs = values if numeric else [labels.index(str(v)) for v in values]
    for state, marker, color in (("finished", "o", "tab:blue"), ("pruned", "x", "grey")):
        picked = [(x, r["value"]) for x, r in zip(xs, rows) if r["state"] == state]
        if picked:
            ax.scatter(*zip(*picked), marker=marker, color=color, label=state)
    if numeric and min(values) > 0 and max(values) / min(values) >= 10:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)
