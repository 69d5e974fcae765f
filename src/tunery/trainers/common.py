"""Small shared pieces of the training loop: the learning-rate schedule and the NaN guard."""

from __future__ import annotations

import math

import torch

from tunery.errors import TuneryError


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based).

    Linear warmup from 1/(warmup+1) to 1, then cosine or linear decay to 0 at `total_steps`, or constant.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def all_finite(tensors) -> bool:
    """True when every tensor holds only finite numbers."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def assert_finite_state(state: dict[str, torch.Tensor], what: str) -> None:
    """Refuse to write a state dict that holds NaN or inf: no saved file ever holds one."""
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise TuneryError(
            f"refusing to save {what}: {len(bad)} tensors hold NaN or inf (first: {bad[0]})",
            fix="lower training.lr or enable clipping (training.max_grad_norm)",
        )
