"""The one place a training forward pass turns a batch into a summed loss.

For the common decoder families the output head runs only at trained positions: a chat example trains
perhaps a third of its tokens, and the head (vocabulary x hidden, 49k x 576 for SmolLM2) plus its
softmax is a large share of the work per token. Families whose head does more than a plain linear
layer (logit soft-capping, scaling) take the full path, which computes the same loss.
"""

from __future__ import annotations

import torch

from tunery.trainers.common import IGNORE
from tunery.trainers.losses import causal_lm_sum, token_ce_sum

# Families whose logits are exactly `lm_head(last_hidden_state)`.
PLAIN_HEAD_FAMILIES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "smollm3"}


def causal_lm_of(model):
    """The transformers causal LM inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def has_plain_head(model) -> bool:
    causal = causal_lm_of(model)
    config = causal.config
    return (config.model_type in PLAIN_HEAD_FAMILIES
            and getattr(config, "final_logit_softcapping", None) is None
            and getattr(config, "logit_scale", None) is None)


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = ("input_ids", "attention_mask", "position_ids")
    # use_cache=False: no KV cache in training, and packed rows stay apart only without it.
    return {k: batch[k] for k in keys if k in batch} | {"use_cache": False}


def forward_loss(model, batch: dict[str, torch.Tensor], trained_only: bool = True) -> tuple[torch.Tensor, int]:
    """Summed next-token loss over trained tokens of one micro-batch, and their count."""
    if not (trained_only and has_plain_head(model)):
        return causal_lm_sum(model(**_model_inputs(batch)).logits, batch["labels"])
    causal = causal_lm_of(model)
    hidden = causal.get_decoder()(**_model_inputs(batch)).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    logits = causal.get_output_embeddings()(hidden[:, :-1][keep])
    return token_ce_sum(logits, targets[keep])
