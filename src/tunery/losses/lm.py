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


def weighted_ce_sum(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, int]:
    """`token_ce_sum`, each position's loss multiplied by `weight` [n] when given:
    loss = - sum_i w_i log softmax(logits[i])[targets[i]]."""
    if weight is None or targets.numel() == 0:
        return token_ce_sum(logits, targets)
    per_token = F.cross_entropy(logits.float(), targets, reduction="none")
    return (per_token * weight.float()).sum(), int(targets.numel())


def kl_from_reference_sum(logits: torch.Tensor, ref_logits: torch.Tensor, weight: torch.Tensor | None = None
                          ) -> torch.Tensor:
    """KL(reference || model) of the next-token distributions, summed over positions: logits and
    ref_logits [n, vocab] at the same positions.

    sum_i sum_v p_ref(v | i) (log p_ref(v | i) - log p(v | i)), in fp32. It is 0 exactly when the model's
    distribution equals the reference's at every position, and its gradient pulls the model towards the
    reference's whole distribution, not only its top token (learning without forgetting, Li and Hoiem
    2016, with the frozen base as the reference).
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    log_ref = F.log_softmax(ref_logits.float(), dim=-1)
    if weight is None:
        return F.kl_div(log_p, log_ref, log_target=True, reduction="sum")
    per_position = F.kl_div(log_p, log_ref, log_target=True, reduction="none").sum(-1)
    return (per_position * weight.float()).sum()  # each position's KL at its weight
