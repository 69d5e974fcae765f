"""The end of a run in words and a picture: summary.md with the run's figures, loss.png, and the
adapter card."""

from __future__ import annotations

from pathlib import Path

from tunery.atomic import atomic_file, write_text_atomic
from tunery.runcard import write_adapter_card
from tunery.runfolder import RunFolder


def best_line(info: dict) -> str:
    """The summary's line about the best step: the validation loss, or the grader score it watched."""
    if info.get("watched") == "grader" and info.get("best_score") is not None:
        return f"- best grader score: {info['best_score']:.3f} at step {info.get('best_step')} (early stopping watched it)"
    line = f"- best validation loss: {_fmt(info.get('best_val_loss'))}"
    return line + (f" at step {info.get('best_step')}" if info.get("best_step") is not None else "")


def write_summary(run: RunFolder, info: dict) -> None:
    """summary.md with the run's figures and, when matplotlib is installed, loss.png."""
    metrics = run.read_metrics()
    train = [m for m in metrics if m.get("kind") == "train" and m.get("loss") is not None]
    evals = [m for m in metrics if m.get("kind") == "eval" and m.get("val_loss") is not None]
    plotted = plot_losses(run.plot, train, evals)
    lines = [
        f"# Run {run.root.name}",
        "",
        f"- base model: `{info.get('base_model')}`; adapter: {info.get('adapter')}; "
        f"trainable parameters: {info.get('trainable_params', 0):,} of {info.get('total_params', 0):,}",
        f"- examples: {info.get('train_examples')} train, {info.get('val_examples')} validation",
        f"- guard against forgetting: {info.get('guard') or 'none'}",
        f"- steps: {info.get('step')} of {info.get('total_steps')} ({info.get('status')})",
        f"- final training loss: {_fmt(train[-1]['loss'] if train else None)}",
        best_line(info),
        f"- tokens processed: {info.get('tokens', 0):,} ({info.get('trained_tokens', 0):,} trained) "
        f"in {info.get('elapsed_s', 0):.0f} s",
        "",
        "![loss curve](loss.png)" if plotted else "(install matplotlib for the loss curve: pip install 'tunery[plots]')",
        "",
    ]
    write_text_atomic(run.summary, "\n".join(lines))
    write_adapter_card(run.root)  # adapter/README.md; nothing for full runs


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def plot_losses(path: Path, train: list[dict], evals: list[dict]) -> bool:
    """Training and validation loss against the step; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot([m["step"] for m in train], [m["loss"] for m in train], label="training loss", lw=1)
    if evals:
        ax.plot([m["step"] for m in evals], [m["val_loss"] for m in evals], "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per trained token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return True
