"""Which figures of a metrics line or of run.json go to a tracker, and under what name."""

from __future__ import annotations

import math

SKIP = {"kind", "step", "best"}  # bookkeeping, not figures


def scalars_of(record: dict) -> dict[str, float]:
    """`{"kind": "eval", "step": 4, "val_loss": 2.1}` -> `{"eval/val_loss": 2.1}`: every finite number
    of the line (not booleans, not the step), named `<kind>/<key>`."""
    kind = record.get("kind", "train")
    return {f"{kind}/{key}": float(value) for key, value in record.items()
            if key not in SKIP and _is_figure(value)}


def final_figures(figures: dict) -> dict[str, float]:
    """The numbers of the run's end (best_val_loss, best_score, step, tokens, elapsed_s ...)."""
    return {key: float(value) for key, value in figures.items() if _is_figure(value)}


def _is_figure(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
