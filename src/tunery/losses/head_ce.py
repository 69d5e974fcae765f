"""Cross-entropy through the output head, a slice of positions at a time, for large vocabularies.

The plain path builds logits [n, vocab] for every trained position at once, then an fp32 copy and the
softmax autograd keeps for the backward pass: with Llama 3's 128,256-token vocabulary and 8,192 trained
positions that is over 8 GB for one micro-batch, more than the 8B model's LoRA activations. Here the
logits of `rows` positions at a time are made, turned into the loss and into the gradients of the
hidden states (and of the head's weight when it trains), and dropped before the next slice: the peak is
one slice's logits. The arithmetic is the plain path's (the head in the weight's dtype, the softmax in
fp32, the gradient cast back before its matrix products), and no matrix product is done twice: the
gradients are made in the forward pass, so a caller must backpropagate the loss it gets, as training
does (with gradients off, only the loss is computed).
"""

from __future__ import annotations

import torch


def _slices(hidden, weight, targets, rows: int, want_hidden: bool, want_weight: bool):
    """(summed loss, d loss / d hidden or None, d loss / d weight or None), `rows` positions at a time."""
    grad_hidden = torch.empty_like(hidden) if want_hidden else None
    grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], rows):
        h, t = hidden[start:start + rows], targets[start:start + rows]
        logits = (h @ weight.T).float()
        log_z = torch.logsumexp(logits, dim=-1)
        total += (log_z - logits.gather(1, t[:, None]).squeeze(1)).sum()
        if want_hidden or want_weight:
            grad = torch.exp(logits - log_z[:, None])  # d loss / d logits = softmax - one-hot
            grad[torch.arange(len(t), device=t.device), t] -= 1.0
            grad = grad.to(weight.dtype)
            if want_hidden:
                grad_hidden[start:start + rows] = grad @ weight
            if want_weight:
                grad_weight += (grad.T @ h).float()
    return total, grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype)


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int):
        total, grad_hidden, grad_weight = _slices(hidden, weight, targets, rows, *ctx.needs_input_grad[:2])
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = lambda g: None if g is None else g * grad_output.to(g.dtype)  # noqa: E731
        return scale(grad_hidden), scale(grad_weight), None, None


def head_ce_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int
                ) -> tuple[torch.Tensor, int]:
    """Cross-entropy of `hidden @ weight.T` against `targets`, summed, `rows` positions at a time:
    hidden [n, d], weight [vocab, d] (a bias-free head), targets [n]. The same value and gradients as
    `token_ce_sum(hidden @ weight.T, targets)` (to rounding), with one slice's logits alive at a time."""
    n, rows = int(targets.numel()), max(1, int(rows))
    if n == 0:
        return (hidden.sum() + weight.sum()) * 0.0, 0
    if not torch.is_grad_enabled():  # evaluation: the loss only
        return _slices(hidden, weight, targets, rows, False, False)[0], n
    return _HeadCrossEntropy.apply(hidden, weight, targets, rows), n
