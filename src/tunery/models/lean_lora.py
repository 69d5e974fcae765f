"""PEFT's LoRA linear layer with less work around its two small products.

PEFT computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`: the scaling multiplies the layer's
whole output ([tokens x out features]) and the sum is one more pass over it, forward and backward, in
every adapted module. Here the scaling multiplies the rank-r activations ([tokens x r], 16 numbers a
token instead of up to 1,536) and the sum is the output product's own accumulation
(`base(x).addmm_(h, B^T)`, in place: nothing saves the base product's output for its backward). The
result is the same sum; with a power-of-two scaling (alpha = 2 x rank, the default) it is the same to
the last bit, since scaling by 2^k rounds nothing. Forward and backward through adapted modules of
SmolLM2's shapes run 1.06x to 1.17x faster on a CPU (`bench/lora_forward.py`); a whole step gains
less than its run-to-run noise.

`LeanLoraLinear` is PEFT's `Linear` with only `forward` replaced, and only for the plain case (one
active adapter of plain LoRA on an `nn.Linear`, no extra arguments, same dtypes); everything else
(DoRA, merged or disabled adapters, a batch of mixed adapters, casts, autocast) goes to PEFT's own
forward. Saving, merging and loading are PEFT's: the weights and the adapter files do not change.
Hooks on `lora_A` still see its input; `lora_B`'s product is the `addmm_`, so its module is not called.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from peft.tuners.lora.layer import Linear as PeftLinear


class LeanLoraLinear(PeftLinear):
    """PEFT's LoRA `Linear`, its plain forward computed as `base(x).addmm_((A dropout(x)) s, B^T)`."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        adapter = self._plain_adapter(x, args, kwargs)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        base = self.base_layer
        out = F.linear(x, base.weight, base.bias)
        h = self.lora_A[adapter](self.lora_dropout[adapter](x)) * self.scaling[adapter]  # [..., r]
        # In place: the base product's output is saved by nothing for its backward, and a fresh copy of
        # it (what an out-of-place addmm makes) costs as much as the sum it saves.
        out.view(-1, out.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), self.lora_B[adapter].weight.t())
        return out

    def _plain_adapter(self, x: torch.Tensor, args, kwargs) -> str | None:
        """The one active plain-LoRA adapter this call can take the lean path with, else None."""
        if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        adapter = self.active_adapters[0]
        variants = getattr(self, "lora_variant", {})  # DoRA and other variants have their own forward
        if adapter not in self.lora_A or adapter in variants or type(self.base_layer) is not nn.Linear:
            return None
        if not (x.dtype == self.lora_A[adapter].weight.dtype == self.base_layer.weight.dtype):
            return None  # PEFT casts the input for the adapter; keep its rounding
        if torch.is_autocast_enabled(x.device.type):
            return None  # autocast picks each product's dtype; an in-place sum would have to match them
        return adapter


def lean_lora(model) -> int:
    """Give every plain PEFT LoRA `Linear` of `model` the lean forward; returns how many."""
    swapped = 0
    for module in model.modules():
        if type(module) is PeftLinear:
            module.__class__ = LeanLoraLinear
            swapped += 1
    return swapped
