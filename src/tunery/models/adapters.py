"""Put a model into its trainable form (LoRA through PEFT, or every weight) and move trainable weights."""

from __future__ import annotations

import torch

from tunery.config.schema import TrainConfig
from tunery.errors import TuneryError


def prepare_trainable(model, cfg: TrainConfig):
    """Wrap `model` with a LoRA adapter (PEFT) or mark every weight trainable, per `cfg.adapter`.

    The adapter's initial weights come from `cfg.training.seed`, so two runs with one seed agree.
    """
    if cfg.adapter == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    torch.manual_seed(cfg.training.seed)
    peft_config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as exc:
        raise TuneryError(
            "the LoRA target modules do not match this model",
            why=str(exc),
            fix="use lora.target_modules=all-linear or names such as [q_proj, v_proj]",
        ) from exc


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (tied weights appear once)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, weights: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable weights back in place; every trainable name must be present, nothing extra."""
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    missing, extra = expected - set(weights), set(weights) - expected
    if missing or extra:
        raise TuneryError(
            "the checkpoint does not match the model being trained",
            why=f"missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}",
            fix="resume with the same config the run was started with",
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
