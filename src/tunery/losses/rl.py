"""Reinforcement fine-tuning losses: group advantages (GRPO, RLOO), the clipped policy objective and the
k3 KL estimator, as pure tensor functions.

Rewards come as [groups, g]: g completions sampled for each of `groups` prompts. The policy loss is
summed over the trained tokens of the batch, with their count, so that the loop divides by the
tokens of the whole step. Each function was checked against TRL 1.16 on the same tensors
(tests/unit/test_losses_rl.py).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _std(x: Tensor, dim: int | None = None) -> Tensor:
    """Unbiased (Bessel) standard deviation, as TRL's `nanstd`; zero where there is one value (TRL's
    own special case), never NaN."""
    n = x.numel() if dim is None else x.shape[dim]
    if n < 2:
        return torch.zeros_like(x.mean() if dim is None else x.mean(dim, keepdim=True))
    return x.std() if dim is None else x.std(dim, keepdim=True)


def grpo_advantages(rewards: Tensor, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """GRPO advantages (Shao et al. 2024, "DeepSeekMath", section 4.1.2, outcome supervision):

    A[i, j] = (R[i, j] - mean_j R[i, :]) / (std + eps)

    std: the unbiased standard deviation of the group R[i, :] (scale="group", the paper's), of the
    whole batch (scale="batch", Hu 2025, REINFORCE++), or no division at all (scale="none", Liu et al.
    2025, Dr. GRPO). The baseline is always the group's mean. A group whose completions all scored the
    same gets zero advantages (0 / eps), not NaN. rewards: [groups, g]; returns the same shape.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [groups, completions per group]; got shape {tuple(rewards.shape)}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if scale == "none":
        return centred
    if scale == "group":
        return centred / (_std(rewards, dim=1) + eps)
    if scale == "batch":
        return centred / (_std(rewards) + eps)
    raise ValueError(f"unknown advantage scale '{scale}'; known: group, batch, none")


def rloo_advantages(rewards: Tensor, normalize: bool = False, eps: float = 1e-4) -> Tensor:
    """RLOO advantages (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization
    for Learning from Human Feedback in LLMs", eq. 7; Kool et al. 2019): each completion's baseline is
    the mean reward of the OTHER g - 1 completions of its prompt.

    A[i, j] = R[i, j] - (sum_k R[i, k] - R[i, j]) / (g - 1)  =  g / (g - 1) (R[i, j] - mean_k R[i, k])

    normalize: then (A - mean A) / (std A + eps) over the whole batch (TRL's `normalize_advantages`).
    With g = 1 there is no baseline: zero advantages. rewards: [groups, g]; returns the same shape.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [groups, completions per group]; got shape {tuple(rewards.shape)}")
    g = rewards.shape[1]
    if g < 2:
        advantages = torch.zeros_like(rewards)
    else:
        baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)
        advantages = rewards - baseline
    if normalize:
        advantages = (advantages - advantages.mean()) / (_std(advantages) + eps)
    return advantages


def kl_k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """Per-token KL(policy || reference) estimate k3 (Schulman 2020, "Approximating KL Divergence"),
    the one GRPO uses (Shao et al. 2024, eq. 4): unbiased and never negative.

    k3 = exp(ref - logp) - (ref - logp) - 1
    """
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def clipped_policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *,
                        eps_low: float = 0.2, eps_high: float = 0.2, ref_logps: Tensor | None = None,
                        beta: float = 0.0) -> tuple[Tensor, int, dict[str, float]]:
    """PPO's clipped surrogate per token (Schulman et al. 2017, "Proximal Policy Optimization"), as GRPO
    applies it (Shao et al. 2024, eq. 3), with DAPO's separate bounds (Yu et al. 2025, "clip-higher"):

    ratio = exp(logp - logp_old)
    loss_t = -min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A)  [+ beta k3(logp, logp_ref)]

    summed over the tokens where mask is set. logps, old_logps, ref_logps, mask: [batch, tokens];
    advantages: [batch] (one per completion) or [batch, tokens]. Returns (the sum, the token count,
    figures as sums over the same tokens: clip_fraction = tokens whose ratio was clipped in the
    direction of their advantage, kl = summed k3 when ref_logps is given).

    Divided by the trained tokens of the whole step, as the loop does, this is TRL GRPOTrainer's
    loss_type "dapo" (its default: divided by the generation batch's tokens) and equals "bnpo" when a
    step is one batch; not "grpo", which averages each completion's tokens first.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    keep = mask.bool()
    # Padding positions may hold anything (even -inf): they enter exp() as 0, so that neither the sum nor
    # the gradient (exp's backward multiplies by its output) can turn into NaN.
    ratio = torch.exp(torch.where(keep, logps - old_logps, 0.0))
    clipped_ratio = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * advantages, clipped_ratio * advantages)
    figures: dict[str, float] = {}
    if ref_logps is not None:
        kl = kl_k3(torch.where(keep, logps, 0.0), torch.where(keep, ref_logps, 0.0))
        per_token = per_token + beta * kl
        figures["kl"] = float(torch.where(keep, kl.detach(), 0.0).sum())
    with torch.no_grad():
        clipped = ((ratio < 1 - eps_low) & (advantages < 0)) | ((ratio > 1 + eps_high) & (advantages > 0))
        figures["clip_fraction"] = float((clipped & keep).sum())
    total = torch.where(keep, per_token, 0.0).sum()
    return total, int(keep.sum()), figures
