"""Loss functions: pure tensor functions with their formula in the docstring, chosen by name.

Methods pick a loss from a registry by the name in their config section; adding a variant is adding a
function and a line in its registry, never an if/elif in a method:

- `LOSSES`: language-model losses (lm.py), summed over tokens; beside them the KL to a reference
  distribution that `training.kl_to_base` adds;
- `PREFERENCE_LOSSES`: pairwise preference losses (preference.py: DPO, robust DPO, hinge, IPO, SimPO),
  per pair, each with what the method must feed it; ORPO, KTO and Bradley-Terry are plain functions there;
- `ADVANTAGES`: group advantages for reinforcement fine-tuning (rl.py: GRPO, RLOO), beside the clipped
  policy loss and the k3 KL estimator.
"""

from __future__ import annotations

from typing import Callable

from tunery.losses.lm import causal_lm_sum, kl_from_reference_sum, token_ce_sum, weighted_ce_sum
from tunery.losses.preference import (PREFERENCE_LOSSES, PreferenceLoss, bradley_terry, kto_loss, orpo_loss,
                                      preference_figures)
from tunery.losses.rl import clipped_policy_loss, grpo_advantages, kl_k3, rloo_advantages

LossFn = Callable[..., object]

LOSSES: dict[str, LossFn] = {"causal_lm": causal_lm_sum, "token_ce": token_ce_sum, "weighted_ce": weighted_ce_sum}
ADVANTAGES: dict[str, LossFn] = {"grpo": grpo_advantages, "rloo": rloo_advantages}

__all__ = ["ADVANTAGES", "LOSSES", "PREFERENCE_LOSSES", "PreferenceLoss", "bradley_terry", "causal_lm_sum",
           "clipped_policy_loss", "get_loss", "kl_from_reference_sum", "kl_k3", "kto_loss", "orpo_loss", "preference_figures",
           "rloo_advantages", "token_ce_sum", "weighted_ce_sum"]


def get_loss(name: str, registry: dict = LOSSES):
    """The registered loss called `name`."""
    try:
        return registry[name]
    except KeyError:
        raise KeyError(f"unknown loss '{name}'; known: {', '.join(sorted(registry))}") from None
