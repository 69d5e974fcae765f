"""The parts of a vision-language model: vision tower, projector, language model, by family.

`vision.train` says which of the vision parts learn: `none` (the default: LoRA, or every weight with
`adapter: full`, on the language model only), `projector` (the projector too, in full) or `tower` (the
projector and the vision tower, in full). With LoRA the vision parts that learn are PEFT's
`modules_to_save`: trained in full next to the adapter and saved with it in `adapter/`.
"""

from __future__ import annotations

import re

import torch

from tunery.errors import TuneryError

# Module names (as the last component of their path) per role, across the supported families:
# LLaVA(-NeXT) `vision_tower` / `multi_modal_projector`, Idefics3 (SmolVLM) `vision_model` / `connector`,
# Qwen2-VL and Qwen2.5-VL `visual` (its projector, `merger`, sits inside it), tunery's composed model
# `vision_backbone` / `multi_modal_projector`.
TOWERS = ("vision_tower", "vision_model", "visual", "vision_backbone")
PROJECTORS = ("multi_modal_projector", "connector", "merger")
LANGUAGE_MODELS = ("language_model", "text_model")
VISION_TRAIN = ("none", "projector", "tower")


def _named(model: torch.nn.Module, names: tuple[str, ...]) -> list[str]:
    """Full names of the outermost modules whose last name component is one of `names`."""
    found: list[str] = []
    for name, _module in model.named_modules():
        if name.rsplit(".", 1)[-1] in names and not any(name.startswith(f + ".") for f in found):
            found.append(name)
    return found


def vision_parts(model: torch.nn.Module) -> dict[str, list[str]]:
    """{"tower": [...], "projector": [...], "language": [...]}: module names of each part."""
    parts = {"tower": _named(model, TOWERS), "projector": _named(model, PROJECTORS),
             "language": _named(model, LANGUAGE_MODELS)}
    if not parts["projector"] or not parts["language"]:
        raise TuneryError(f"{type(model).__name__} is not a vision-language model tunery knows",
                          why="no projector or no language model found among its modules",
                          fix="use a LLaVA, LLaVA-NeXT, Idefics3/SmolVLM, Qwen2-VL or Qwen2.5-VL model")
    return parts


def is_vision_weight(name: str) -> bool:
    """Is the weight of this full name part of the vision tower or the projector (of any family)?"""
    return any(piece in TOWERS or piece in PROJECTORS for piece in name.split("."))


def learning_parts(vision_train: str) -> tuple[str, ...]:
    """Which vision parts learn for a `vision.train` value."""
    return {"none": (), "projector": ("projector",), "tower": ("projector", "tower")}[vision_train]


def language_lora_pattern(model: torch.nn.Module) -> str:
    """A PEFT target pattern for every linear layer of the language model, none of the vision parts
    (PEFT's `all-linear` would adapt the vision tower and the projector too)."""
    language = vision_parts(model)["language"]
    leaves = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear) and any(name.startswith(p + ".") for p in language)})
    roots = "|".join(re.escape(p) for p in language)
    return rf"(?:.*\.)?(?:{roots})\..*\.(?:{'|'.join(map(re.escape, leaves))})"


def freeze_for(model: torch.nn.Module, vision_train: str) -> None:
    """With every weight trainable (`adapter: full`), freeze the vision parts that do not learn
    (all of them first, then the learning ones back: Qwen2-VL's projector sits inside its tower)."""
    parts = vision_parts(model)
    for name in parts["tower"] + parts["projector"]:
        model.get_submodule(name).requires_grad_(False)
    for part in learning_parts(vision_train):
        for name in parts[part]:
            model.get_submodule(name).requires_grad_(True)


def saved_modules(model: torch.nn.Module, vision_train: str) -> list[str]:
    """Module names PEFT trains in full next to the adapter (`modules_to_save`), as paths relative
    to the model (PEFT matches them as name suffixes)."""
    parts = vision_parts(model)
    names = [name for part in learning_parts(vision_train) for name in parts[part]]
    return [n for n in names if not any(n.startswith(other + ".") for other in names)]  # the outermost only
