"""Loss functions: pure tensor functions with their formula in the docstring, chosen by name.

Methods pick a loss from `LOSSES` by the name in their config section; adding a variant is adding a
function and a line here, never an if/elif in a method.
"""

from __future__ import annotations

from typing import Callable

from tunery.losses.lm import causal_lm_sum, token_ce_sum

LossFn = Callable[..., object]

LOSSES: dict[str, LossFn] = {"causal_lm": causal_lm_sum, "token_ce": token_ce_sum}


def get_loss(name: str, registry: dict[str, LossFn] = LOSSES) -> LossFn:
    """The registered loss called `name`."""
    try:
        return registry[name]
    except KeyError:
        raise KeyError(f"unknown loss '{name}'; known: {', '.join(sorted(registry))}") from None
