"""Language-model losses: next-token cross-entropy, as pure tensor functions.

Each returns the loss *summed* over trained tokens and the count of those tokens, so that gradient
accumulation can divide by the trained tokens of the whole optimizer step (1 x 8 == 8 x 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunery.data.batching import IGNORE

def causal_lm_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy summed over trained positions.

    loss = - sum_{t : labels[t+1] != IGNORE} log softmax(logits[t])[labels[t+1]]

    Position t predicts token t+1 (the standard causal LM objective, Radford et al. 2018).
    Returns (summed loss, number of trained tokens).
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE
    # Only the trained positions go through log-softmax: most chat positions are prompt tokens.
    return token_ce_sum(logits[:, :-1, :][keep], targets[keep])


def token_ce_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cross-entropy summed over already-selected positions: logits [n, vocab], targets [n].

    loss = - sum_i log softmax(logits[i])[targets[i]], computed in fp32 whatever the logits' dtype.
    """
    n = int(targets.numel())
    if n == 0:
        return logits.sum() * 0.0, 0
    return F.cross_entropy(logits.float(), targets, reduction="sum"), n
