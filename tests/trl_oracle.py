"""TRL 1.16 as an oracle for tunery's losses: TRL's own code run on tensors we choose.

TRL computes its losses inside trainer methods that read a few attributes and call the model. We call
those methods unbound on a stand-in `self` carrying exactly those attributes, with a stand-in model
that returns the per-sequence values we want (each row's value at its first position, zeros after,
so TRL's sum over positions gives the value back). Where the computation is a block inside a long
generation method (GRPO's and RLOO's advantages), we run that block's source as TRL ships it.
Importing this module needs `trl` (the `dev` extra); tests import it through `pytest.importorskip`.
"""

from __future__ import annotations

import inspect
import textwrap
import types
from collections import defaultdict

import warnings

import torch

with warnings.catch_warnings():  # trl.experimental warns on import that its APIs may change (hence the pin)
    warnings.simplefilter("ignore")
    from trl.experimental.cpo.cpo_trainer import CPOTrainer
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.kto_trainer import KTOTrainer
from trl.trainer.reward_trainer import RewardTrainer
from trl.trainer.rloo_trainer import RLOOTrainer
from trl.trainer.utils import nanstd


class _Accelerator:
    """One process: gathers and reductions are the identity."""

    device = torch.device("cpu")
    num_processes = 1

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


class _ValueModel:
    """Row i of input_ids starts with an index into `values`; the output carries that value."""

    training = True

    def __init__(self, values: torch.Tensor):
        self.values = values

    def __call__(self, input_ids, **kwargs):
        picked = self.values[input_ids[:, 0]]
        log_probs = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1, dtype=self.values.dtype)
        log_probs[:, 0] = picked
        zeros = torch.zeros_like(log_probs)
        return types.SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros,
                                     is_top1=zeros.bool(), logits=picked.unsqueeze(-1))


def _stand_in(model=None, **attributes):
    me = types.SimpleNamespace(accelerator=_Accelerator(), model=model or _ValueModel(torch.zeros(1)),
                               _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0,
                               _tp_size=1, aux_loss_enabled=False, **attributes)
    return me


def _rows(first: int, count: int, width: int) -> torch.Tensor:
    ids = torch.zeros(count, width, dtype=torch.long)
    ids[:, 0] = torch.arange(first, first + count)
    return ids


def _lengths_mask(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()


def dpo(loss_type, chosen, rejected, ref_chosen, ref_rejected, *, beta, label_smoothing=0.0, lengths=None):
    """DPOTrainer._compute_loss (trl/trainer/dpo_trainer.py) with precomputed reference log-probs:
    (mean loss over the pairs, TRL's logged metrics). `lengths` [2n]: completion lengths (IPO divides by them)."""
    n = chosen.shape[0]
    lengths = lengths or [1] * (2 * n)
    width = max(lengths) + 1
    me = _stand_in(_ValueModel(torch.cat([chosen, rejected])), loss_types=[loss_type], loss_weights=[1.0],
                   beta=beta, label_smoothing=label_smoothing, ld_alpha=None, precompute_ref_logps=True,
                   f_divergence_type="reverse_kl", use_weighting=False)
    inputs = {"input_ids": _rows(0, 2 * n, width), "attention_mask": torch.ones(2 * n, width, dtype=torch.long),
              "completion_mask": _lengths_mask(lengths, width), "ref_chosen_logps": ref_chosen,
              "ref_rejected_logps": ref_rejected}
    loss = DPOTrainer._compute_loss(me, me.model, inputs, return_outputs=False)
    return loss, {k: v[0] for k, v in me._metrics["train"].items()}


def cpo(loss_type, chosen, rejected, *, beta, label_smoothing=0.0, simpo_gamma=0.5):
    """CPOTrainer.cpo_loss (trl/experimental/cpo/cpo_trainer.py): per-pair losses, chosen and rejected rewards."""
    me = _stand_in(alpha=0.0, loss_type=loss_type, beta=beta, label_smoothing=label_smoothing,
                   simpo_gamma=simpo_gamma)
    return CPOTrainer.cpo_loss(me, chosen, rejected)


def orpo_odds_ratio(chosen_avg, rejected_avg, *, beta):
    """ORPOTrainer.odds_ratio_loss (trl/experimental/orpo/orpo_trainer.py): (beta * log sigma(log odds)
    per pair, chosen rewards, rejected rewards, mean log sigma(log odds), mean log odds)."""
    return ORPOTrainer.odds_ratio_loss(_stand_in(beta=beta), chosen_avg, rejected_avg)


def kto(policy, ref, desirable, kl_policy, kl_ref, *, beta, desirable_weight=1.0, undesirable_weight=1.0):
    """KTOTrainer._compute_loss (trl/trainer/kto_trainer.py) with precomputed reference log-probs; the
    KL point comes from the mismatched rows kl_policy / kl_ref as TRL computes it. Returns (mean loss, kl)."""
    n, m = policy.shape[0], kl_policy.shape[0]
    me = _stand_in(_ValueModel(torch.cat([policy, kl_policy])), calculate_KL=True, precompute_ref_logps=True,
                   loss_type="kto", beta=beta, desirable_weight=desirable_weight,
                   undesirable_weight=undesirable_weight)
    me._compute_kl_logps = types.MethodType(KTOTrainer._compute_kl_logps, me)
    ones = torch.ones(n, 2, dtype=torch.long)
    inputs = {"input_ids": _rows(0, n, 2), "attention_mask": ones, "completion_mask": ones,
              "label": desirable.bool(), "ref_logps": ref, "KL_input_ids": _rows(n, m, 2),
              "KL_attention_mask": torch.ones(m, 2, dtype=torch.long),
              "KL_completion_mask": torch.ones(m, 2, dtype=torch.long), "ref_KL_logps": kl_ref}
    loss = KTOTrainer._compute_loss(me, me.model, inputs, return_outputs=False)
    return loss, me._metrics["train"]["kl"][0]


def reward(chosen, rejected, margin=None, center_rewards_coefficient=None):
    """RewardTrainer.compute_loss (trl/trainer/reward_trainer.py): the mean loss over the pairs."""
    n = chosen.shape[0]
    me = _stand_in(_ValueModel(torch.cat([chosen, rejected])),
                   args=types.SimpleNamespace(center_rewards_coefficient=center_rewards_coefficient))
    inputs = {"input_ids": _rows(0, 2 * n, 2), "attention_mask": torch.ones(2 * n, 2, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = margin
    return RewardTrainer.compute_loss(me, me.model, inputs)


def grpo_policy(logps, old_logps, advantages, mask, *, loss_type, epsilon_low, epsilon_high, beta=0.0,
                ref_logps=None):
    """GRPOTrainer._compute_loss (trl/trainer/grpo_trainer.py), one process, no accumulation, the policy's
    per-token log-probs given. Returns (loss, TRL's logged metrics)."""
    batch, tokens = logps.shape
    me = _stand_in(top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
                   beta=beta, loss_type=loss_type, epsilon_low=epsilon_low, epsilon_high=epsilon_high,
                   use_vllm=False, current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
                   args=types.SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1))
    me._get_per_token_logps_and_entropies = lambda *args, **kwargs: (logps, torch.zeros_like(logps), None)
    inputs = {"prompt_ids": torch.zeros(batch, 1, dtype=torch.long), "prompt_mask": torch.ones(batch, 1),
              "completion_ids": torch.zeros(batch, tokens, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": old_logps, "num_items_in_batch": mask.sum()}
    if ref_logps is not None:
        inputs["ref_per_token_logps"] = ref_logps
    loss = GRPOTrainer._compute_loss(me, me.model, inputs)
    return loss, {k: v[0] for k, v in me._metrics["train"].items()}


def _source_block(function, first: str, last: str) -> str:
    """The lines of `function`'s source from the one containing `first` to the next containing `last`."""
    lines = inspect.getsource(function).splitlines()
    start = next(i for i, line in enumerate(lines) if first in line)
    end = next(i for i in range(start, len(lines)) if last in lines[i])
    return textwrap.dedent("\n".join(lines[start:end + 1]))


def grpo_advantages(rewards: torch.Tensor, scale_rewards: str) -> torch.Tensor:
    """The advantage block of GRPOTrainer._generate_and_score_completions (one reward function,
    "sum_then_normalize"), run as TRL ships it. rewards: [groups, g]."""
    block = _source_block(GRPOTrainer._generate_and_score_completions,
                          "mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)",
                          "advantages = advantages / (std_rewards + 1e-4)")
    scope = {"torch": torch, "nanstd": nanstd, "rewards": rewards.flatten(), "num_generations": rewards.shape[1],
             "self": types.SimpleNamespace(scale_rewards=scale_rewards)}
    exec(block, scope)
    return torch.nan_to_num(scope["advantages"], nan=0.0).view_as(rewards)


def rloo_advantages(rewards: torch.Tensor, normalize_advantages: bool) -> torch.Tensor:
    """The advantage block of RLOOTrainer._generate_and_score_completions, run as TRL ships it."""
    block = _source_block(RLOOTrainer._generate_and_score_completions,
                          "grouped_rewards = rewards.view(-1, num_generations)",
                          "advantages = torch.nan_to_num(advantages, nan=0.0)")
    scope = {"torch": torch, "nanstd": nanstd, "rewards": rewards.flatten(), "num_generations": rewards.shape[1],
             "self": types.SimpleNamespace(normalize_advantages=normalize_advantages)}
    exec(block, scope)
    return scope["advantages"].view_as(rewards)
