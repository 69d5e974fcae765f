"""The report's pictures as PNG bytes (matplotlib, Agg backend): per-grader bars with intervals, loss
curves, and the forgetting probe. Each returns None when matplotlib is not installed, and the report
says how to get it."""

from __future__ import annotations

import io


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _png(fig, plt) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def grader_bars(rows: list[dict], labels: list[str]) -> bytes | None:
    """Grouped bars: one group per grader, one bar per system, 95% interval as error bars."""
    plt = _pyplot()
    if plt is None or not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(labels) * max(1, len(rows)) / 2), 3.8), dpi=100)
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(labels))]
        means = [row["scores"][label]["mean"] for label in labels]
        lows = [m - row["scores"][label]["low"] for m, label in zip(means, labels)]
        highs = [row["scores"][label]["high"] - m for m, label in zip(means, labels)]
        ax.bar(xs, means, width, yerr=[lows, highs], capsize=3, label=row["system"]["name"])
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of examples passing")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig, plt)


def loss_curves(metrics: list[dict], title: str) -> bytes | None:
    """Training and validation loss per step, and grader scores when training logged them."""
    plt = _pyplot()
    train = [m for m in metrics if m.get("kind") == "train" and m.get("loss") is not None]
    evals = [m for m in metrics if m.get("kind") == "eval" and m.get("val_loss") is not None]
    graded = [m for m in metrics if m.get("kind") == "grader" and m.get("score") is not None]
    if plt is None or not (train or evals):
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.5), dpi=100)
    if train:
        ax.plot([m["step"] for m in train], [m["loss"] for m in train], lw=1, label="training loss")
    if evals:
        ax.plot([m["step"] for m in evals], [m["val_loss"] for m in evals], "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per trained token")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if graded:
        twin = ax.twinx()
        twin.plot([m["step"] for m in graded], [m["score"] for m in graded], "s--", color="tab:green",
                  label="grader score")
        twin.set_ylim(0, 1.05)
        twin.set_ylabel("grader score")
        twin.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    return _png(fig, plt)


def probe_bars(forgetting: dict) -> bytes | None:
    """Probe score before and after tuning, per run, with 95% intervals."""
    plt = _pyplot()
    if plt is None or not forgetting:
        return None
    names, means, lows, highs = [], [], [], []
    for run, f in forgetting.items():
        for when in ("before", "after"):
            s = f[when]
            names.append(f"{when}\n{run.rstrip('/').rsplit('/', 1)[-1]}" if len(forgetting) > 1 else when)
            means.append(s["mean"])
            lows.append(s["mean"] - s["low"])
            highs.append(s["high"] - s["mean"])
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names)), 3.2), dpi=100)
    ax.bar(range(len(names)), means, yerr=[lows, highs], capsize=4,
           color=["tab:gray", "tab:blue"] * (len(names) // 2))
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("probe items passed")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig, plt)
