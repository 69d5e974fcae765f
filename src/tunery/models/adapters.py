"""Put a model into its trainable form (LoRA through PEFT, or every weight) and move trainable weights."""

from __future__ import annotations

import torch

from tunery.config.schema import LoraSection, TrainConfig
from tunery.errors import TuneryError


def prepare_trainable(model, cfg: TrainConfig, task_type: str = "CAUSAL_LM", extra_modules: list[str] = ()):
    """Wrap `model` with a LoRA adapter (PEFT) or mark every weight trainable, per `cfg.adapter`.

    `task_type` is PEFT's name of the model's task (`SEQ_CLS` for a reward model); `extra_modules` are
    trained in full next to the adapter and saved with it (a reward model's new head).

    `qlora` expects a base loaded in 4 bits (`models.quant.load_for_training`) and puts the same LoRA
    (or DoRA / rsLoRA) on top; the 4-bit weights stay frozen. The adapter's initial weights come from
    `cfg.training.seed`, so two runs with one seed agree.
    """
    if cfg.adapter == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    if cfg.adapter == "qlora":
        from tunery.models.quant import count_4bit_layers

        if count_4bit_layers(model) == 0:
            raise TuneryError(
                "adapter: qlora needs a base model loaded in 4 bits",
                why="no bitsandbytes 4-bit layer was found in the model",
                fix="load it with tunery.models.quant.load_for_training(cfg)",
            )
    from peft import get_peft_model

    torch.manual_seed(cfg.training.seed)
    try:
        peft_model = get_peft_model(model, peft_lora_config(cfg.lora, task_type, extra_modules))
    except ValueError as exc:
        raise TuneryError(
            "the LoRA target modules do not match this model",
            why=str(exc),
            fix="use lora.target_modules=all-linear, names such as [q_proj, v_proj], or a regular "
            "expression over whole module names",
        ) from exc
    if cfg.lora.dropout_mask == "shared":
        from tunery.models.shared_dropout import share_lora_dropout

        share_lora_dropout(peft_model)
    from tunery.models.lean_lora import lean_lora

    lean_lora(peft_model)  # the same sum with less work around the adapter's products
    return peft_model


def peft_lora_config(lora: LoraSection, task_type: str = "CAUSAL_LM", extra_modules: list[str] = ()):
    """PEFT's LoraConfig for a `lora:` section (target names, pattern or all-linear; DoRA; rsLoRA)."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        modules_to_save=list(dict.fromkeys([*lora.modules_to_save, *extra_modules])) or None,
        use_dora=lora.dora,
        use_rslora=lora.rslora,
        task_type=task_type,
    )


def trainable_names(model) -> list[str]:
    """Names of the trainable parameters (tied weights appear once), in the model's order."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (tied weights appear once)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def name_mismatch(model, weights: dict[str, torch.Tensor]) -> TuneryError | None:
    """The error to raise when saved weights are not exactly the model's trainable names (else None)."""
    expected = set(trainable_names(model))
    missing, extra = expected - set(weights), set(weights) - expected
    if not (missing or extra):
        return None
    return TuneryError(
        "the checkpoint does not match the model being trained",
        why=f"missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}",
        fix="resume with the same config the run was started with",
    )


def load_trainable_state(model, weights: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable weights back in place; every trainable name must be present, nothing extra."""
    problem = name_mismatch(model, weights)
    if problem is not None:
        raise problem
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
