"""Merging a saved LoRA/DoRA adapter into base weights, as a pure function of tensors.

Nothing here touches a model object, PEFT's layers or the disk: the inputs are the base state dict,
the adapter's saved tensors (``adapter_model.safetensors``) and its ``adapter_config.json``; the output
is a new state dict. That keeps the arithmetic testable on hand-made tensors, and makes a merge
idempotent by construction: the base is read fresh each time, so an update is never applied twice.

Per adapted linear layer with weight W (out x in), factors A (r x in) and B (out x r):

- LoRA:   W' = W + s * B @ A,  s = alpha / r  (rsLoRA: s = alpha / sqrt(r), Kalajdzievski 2023)
- DoRA:   V = W + s * B @ A;  W' = (m / ||V||_row) * V,  m the learned magnitude per output row
  (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"; the norm is taken over the input
  dimension of each output row, as the training-time layer computes it).

``modules_to_save`` copies (whole trained modules) replace the base tensors of the same name.
"""

from __future__ import annotations

import re

import torch

from tunery.errors import TuneryError

PREFIX = "base_model.model."
_FACTOR = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_magnitude_vector)$")
_PART_NAMES = {"lora_A.weight": "A", "lora_B.weight": "B", "lora_magnitude_vector": "magnitude"}
_UNSUPPORTED = ("lora_embedding_A", "lora_embedding_B", "lora_A.bias", "lora_B.bias")


def _pattern_value(module: str, patterns: dict, default):
    """PEFT's rank/alpha patterns: a key applies to a module whose name ends with it (regex allowed)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def lora_scale(module: str, rank: int, config: dict) -> float:
    """The factor s that multiplies B @ A for `module`, from the adapter config."""
    alpha = _pattern_value(module, config.get("alpha_pattern"), config["lora_alpha"])
    if config.get("use_rslora"):
        return float(alpha) / rank**0.5
    return float(alpha) / rank


def split_adapter(adapter: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """({module: {lora_A, lora_B[, magnitude]}}, {base key: full replacement tensor}) of saved adapter tensors."""
    factors: dict[str, dict[str, torch.Tensor]] = {}
    whole: dict[str, torch.Tensor] = {}
    for key, tensor in adapter.items():
        if any(part in key for part in _UNSUPPORTED):
            raise TuneryError(
                f"the adapter holds '{key}', a kind of LoRA tensor tunery cannot merge",
                why="only linear-layer LoRA/DoRA factors and modules_to_save copies are supported",
                fix="train with LoRA on linear layers (lora.target_modules), without lora_bias",
            )
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        match = _FACTOR.match(name)
        if match:
            factors.setdefault(match["module"], {})[_PART_NAMES[match["part"]]] = tensor
        else:
            whole[name] = tensor
    return factors, whole


def lora_delta(a: torch.Tensor, b: torch.Tensor, scale: float, fan_in_fan_out: bool = False) -> torch.Tensor:
    """s * B @ A in float32 (transposed for Conv1D-style layers that store W as in x out)."""
    delta = (b.float() @ a.float()) * scale
    return delta.T if fan_in_fan_out else delta


def merge_lora_weights(base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor],
                       config: dict) -> dict[str, torch.Tensor]:
    """A new state dict: `base` with the adapter merged in (see the module docstring for the formulas).

    Tensors the adapter does not touch are passed through unchanged (same objects, no copy). Merged
    tensors are computed in float32 and cast back to the base tensor's dtype.
    """
    factors, whole = split_adapter(adapter)
    merged = dict(base)
    fan = bool(config.get("fan_in_fan_out"))
    for module, parts in factors.items():
        key = f"{module}.weight"
        if key not in base or "A" not in parts or "B" not in parts:
            raise TuneryError(
                f"the adapter's module '{module}' has no matching weight in the base model",
                why=f"looked for '{key}'; found factors {sorted(parts)}",
                fix="merge the adapter into the base model it was trained on (run.json's base_model)",
            )
        weight = base[key]
        a, b = parts["A"], parts["B"]
        scale = lora_scale(module, a.shape[0], config)
        updated = weight.float() + lora_delta(a, b, scale, fan)
        if "magnitude" in parts:
            norm = torch.linalg.norm(updated.T if fan else updated, dim=1)
            ratio = parts["magnitude"].float() / norm
            updated = updated * (ratio.view(1, -1) if fan else ratio.view(-1, 1))
        merged[key] = updated.to(weight.dtype)
    for key, tensor in whole.items():
        if key not in base:
            raise TuneryError(
                f"the adapter saves a whole module '{key}' that the base model does not have",
                fix="merge the adapter into the base model it was trained on",
            )
        merged[key] = tensor.to(base[key].dtype)
    return merged


def non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors that hold NaN or inf."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
