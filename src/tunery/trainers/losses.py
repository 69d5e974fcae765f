"""Loss functions as pure tensor functions, chosen by name from a registry.

Each returns the loss *summed* over trained tokens and the count of those tokens, so that gradient
accumulation can divide by the trained tokens of the whole optimizer step (1 x 8 == 8 x 1).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from tunery.trainers.common import IGNORE

LossFn = Callable[..., tuple[torch.Tensor, int]]


def causal_lm_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy summed over trained positions.

    loss = - sum_{t : labels[t+1] != IGNORE} log softmax(logits[t])[labels[t+1]]

    Position t predicts token t+1 (the standard causal LM objective, Radford et al. 2018).
    Returns (summed loss, number of trained tokens).
    """
    shifted_logits = logits[:, :-1, :]
    targets = labels[:, 1:]
    keep = targets != IGNORE
    n = int(keep.sum())
    if n == 0:
        return shifted_logits.sum() * 0.0, 0
    # Only the trained positions go through log-softmax: most chat positions are prompt tokens.
    picked = shifted_logits[keep].float()
    loss = F.cross_entropy(picked, targets[keep], reduction="sum")
    return loss, n


LOSSES: dict[str, LossFn] = {"causal_lm": causal_lm_sum}


def get_loss(name: str) -> LossFn:
    """The registered loss called `name`."""
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss '{name}'; known: {', '.join(sorted(LOSSES))}") from None
