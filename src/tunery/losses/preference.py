"""Preference losses: pairs (chosen, rejected), single labelled answers (KTO) and reward models.

Every function takes per-sequence log-probabilities (or rewards) and returns a loss *per pair* (or per
example), shape [n]; the method sums it and reports n as its unit count, the loop divides by the units
of the whole step. The reference log-probs of DPO-style losses come from a frozen model and carry no
gradient; the losses do not detach them (the method computes them under `torch.no_grad`).

Notation: c, r = policy log p(chosen | x), log p(rejected | x); c_ref, r_ref = the same under the
reference model; sigma = the logistic function; d = (c - c_ref) - (r - r_ref), the DPO log-ratio margin.
Each loss was checked against TRL 1.16 on the same tensors (tests/unit/test_losses_preference.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _margin(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor) -> Tensor:
    return (chosen - ref_chosen) - (rejected - ref_rejected)


def dpo_sigmoid(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, *, beta: float,
                label_smoothing: float = 0.0) -> Tensor:
    """DPO (Rafailov et al. 2023, "Direct Preference Optimization"), conservative with label smoothing.

    loss = -(1 - eps) log sigma(beta d) - eps log sigma(-beta d),   eps = label_smoothing

    eps = 0 is DPO; eps > 0 is conservative DPO (Mitchell 2023): the labels are trusted with
    probability 1 - eps. Equal policy and reference margins (d = 0) give log 2.
    """
    logits = beta * _margin(chosen, rejected, ref_chosen, ref_rejected)
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def dpo_robust(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, *, beta: float,
               label_smoothing: float = 0.0) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO"): unbiased under labels flipped with
    probability eps = label_smoothing, which must lie in [0, 0.5).

    loss = [-(1 - eps) log sigma(beta d) + eps log sigma(-beta d)] / (1 - 2 eps)
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs label_smoothing in [0, 0.5) (a flip probability); got {label_smoothing}")
    logits = beta * _margin(chosen, rejected, ref_chosen, ref_rejected)
    clean = -(1 - label_smoothing) * F.logsigmoid(logits)
    flipped = -label_smoothing * F.logsigmoid(-logits)
    return (clean - flipped) / (1 - 2 * label_smoothing)


def dpo_hinge(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, *,
              beta: float) -> Tensor:
    """Hinge loss on the DPO margin (SLiC, Zhao et al. 2023, "SLiC-HF", with the reference ratio as in
    RSO, Liu et al. 2023): loss = max(0, 1 - beta d)."""
    return torch.relu(1 - beta * _margin(chosen, rejected, ref_chosen, ref_rejected))


def ipo(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, *, beta: float) -> Tensor:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", eq. 17), beta playing the paper's tau:

    loss = (d - 1 / (2 beta))^2

    The log-probs are per-token MEANS over each completion (`average_logps`), as TRL does with the IPO
    authors' agreement: with sums the square would grow with the completion's length.
    """
    return (_margin(chosen, rejected, ref_chosen, ref_rejected) - 1 / (2 * beta)) ** 2


def simpo(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor | None = None, ref_rejected: Tensor | None = None,
          *, beta: float, gamma: float = 0.5, label_smoothing: float = 0.0) -> Tensor:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"):
    no reference model, per-token MEAN log-probs (`average_logps`) and a target reward margin gamma.

    loss = -(1 - eps) log sigma(beta (c - r) - gamma) - eps log sigma(-(beta (c - r) - gamma))

    eps = label_smoothing (0 in the paper). This is TRL's CPOTrainer with loss_type="simpo" and
    cpo_alpha=0 (no added NLL term); the reference arguments are ignored.
    """
    logits = beta * (chosen - rejected) - gamma
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


@dataclass(frozen=True)
class PreferenceLoss:
    """A pairwise loss and what the method must feed it.

    needs_reference: whether a frozen reference model's log-probs are needed;
    average_logps: whether log-probs are per-token means over each completion (else sums);
    options: the keyword options `fn` takes besides beta (the method passes only these).
    """

    fn: Callable[..., Tensor]
    needs_reference: bool
    average_logps: bool
    options: tuple[str, ...] = ()

    def __call__(self, chosen: Tensor, rejected: Tensor, ref_chosen: Tensor | None, ref_rejected: Tensor | None,
                 *, beta: float, **options: float) -> Tensor:
        """The per-pair loss; options this loss does not take are an error, never silently dropped."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TypeError(f"{self.fn.__name__} takes no option {', '.join(unknown)}; "
                            f"its options: {', '.join(self.options) or 'none besides beta'}")
        if self.needs_reference and (ref_chosen is None or ref_rejected is None):
            raise ValueError(f"{self.fn.__name__} needs the reference model's log-probs")
        return self.fn(chosen, rejected, ref_chosen, ref_rejected, beta=beta, **options)


PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    "sigmoid": PreferenceLoss(dpo_sigmoid, needs_reference=True, average_logps=False, options=("label_smoothing",)),
    "robust": PreferenceLoss(dpo_robust, needs_reference=True, average_logps=False, options=("label_smoothing",)),
    "hinge": PreferenceLoss(dpo_hinge, needs_reference=True, average_logps=False),
    "ipo": PreferenceLoss(ipo, needs_reference=True, average_logps=True),
    "simpo": PreferenceLoss(simpo, needs_reference=False, average_logps=True, options=("gamma", "label_smoothing")),
}


@torch.no_grad()
def preference_figures(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor | None, ref_rejected: Tensor | None,
                       beta: float) -> dict[str, Tensor]:
    """Per-pair figures a preference method logs (detached), as TRL names them without the slash:

    rewards_chosen = beta (c - c_ref), rewards_rejected = beta (r - r_ref) (without a reference:
    beta c and beta r, as TRL's CPO/SimPO log), margin = rewards_chosen - rewards_rejected,
    accuracy = 1.0 where margin > 0 else 0.0.
    """
    rewards_chosen = beta * (chosen - ref_chosen if ref_chosen is not None else chosen)
    rewards_rejected = beta * (rejected - ref_rejected if ref_rejected is not None else rejected)
    margin = rewards_chosen - rewards_rejected
    return {"rewards_chosen": rewards_chosen, "rewards_rejected": rewards_rejected, "margin": margin,
            "accuracy": (margin > 0).to(margin.dtype)}


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0 without cancellation (Maechler 2012, "Accurately Computing
    log(1 - exp(-|a|))"): log1p(-exp(x)) below -log 2, log(-expm1(x)) above.

    Each branch only sees inputs it is safe on: `where` differentiates both, and the unused branch's
    infinite derivative (log1p(-exp(x)) when exp(x) rounds to 1) times zero would make the gradient NaN.
    TRL's log1mexp has the same values but that NaN gradient."""
    low = x < -math.log(2)
    return torch.where(low, torch.log1p(-torch.exp(torch.where(low, x, -1.0))),
                       torch.log(-torch.expm1(torch.where(low, -1.0, x))))


def _log_odds_ratio(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor) -> Tensor:
    c, r = chosen_avg_logps.float(), rejected_avg_logps.float()
    return (c - r) - (log1mexp(c) - log1mexp(r))


def orpo_loss(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, chosen_nll: Tensor, *, beta: float) -> Tensor:
    """ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model", eqs. 4-7):

    log odds(y) = log p - log(1 - p),  p = exp(mean token log-prob of y)
    loss = nll(chosen) - beta log sigma(log odds(chosen) - log odds(rejected))

    chosen_nll: the chosen answer's mean token negative log-likelihood, per pair. Computed in fp32.
    TRL averages the NLL over all chosen tokens of the batch instead; with equal lengths they agree.
    """
    return chosen_nll.float() - beta * F.logsigmoid(_log_odds_ratio(chosen_avg_logps, rejected_avg_logps))


@torch.no_grad()
def orpo_figures(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor) -> dict[str, Tensor]:
    """Per-pair ORPO figures under TRL's names: log_odds_chosen = log odds(chosen) - log odds(rejected);
    log_odds_ratio = log sigma(log_odds_chosen), the term the loss maximises."""
    log_odds = _log_odds_ratio(chosen_avg_logps, rejected_avg_logps)
    return {"log_odds_chosen": log_odds, "log_odds_ratio": F.logsigmoid(log_odds)}


def kto_loss(policy_logps: Tensor, ref_logps: Tensor, desirable: Tensor, kl: Tensor, *, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> Tensor:
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", eq. 7):

    z = max(kl, 0), detached;  rho = log p(y|x) - log p_ref(y|x)
    desirable y:   loss = w_d (1 - sigma(beta (rho - z)))
    undesirable y: loss = w_u (1 - sigma(beta (z - rho)))

    kl: the batch's KL reference point, `kto_kl(...)` over mismatched (prompt, answer) pairs, averaged
    over every process before it is passed here as TRL does. Returns one loss per example.
    """
    z = kl.detach().clamp(min=0)
    rho = policy_logps - ref_logps
    good = desirable_weight * (1 - torch.sigmoid(beta * (rho - z)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z - rho)))
    return torch.where(desirable.bool(), good, bad)


@torch.no_grad()
def kto_kl(mismatched_logps: Tensor, ref_mismatched_logps: Tensor) -> Tensor:
    """KTO's reference point: the mean log-ratio of answers paired with other examples' prompts
    (a biased estimate of KL(policy || reference)), detached; kto_loss clamps it at 0."""
    return (mismatched_logps - ref_mismatched_logps).mean()


def bradley_terry(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None, *,
                  center_coefficient: float | None = None) -> Tensor:
    """Reward-model loss under the Bradley-Terry model (Bradley & Terry 1952; Ouyang et al. 2022):

    loss = -log sigma(r_chosen - r_rejected - margin)  [+ c (r_chosen + r_rejected)^2]

    margin (per pair, optional): how much better the chosen answer must score (Llama 2, Touvron et al.
    2023). center_coefficient c (optional) pulls rewards towards zero mean (Eisenstein et al. 2023),
    TRL's `center_rewards_coefficient`.
    """
    diff = chosen_rewards - rejected_rewards
    loss = -F.logsigmoid(diff if margin is None else diff - margin)
    if center_coefficient is not None:
        loss = loss + center_coefficient * (chosen_rewards + rejected_rewards) ** 2
    return loss
