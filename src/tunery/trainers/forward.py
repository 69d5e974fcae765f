"""The one place a training forward pass turns a batch into a summed loss.

For the common decoder families the output head runs only at trained positions: a chat example trains
perhaps a third of its tokens, and the head (vocabulary x hidden, 49k x 576 for SmolLM2) plus its
softmax is a large share of the work per token. Families whose head does more than a plain linear
layer (logit soft-capping, scaling) take the full path, which computes the same loss.
"""

from __future__ import annotations

import math

import torch

from tunery.trainers.common import IGNORE, make_batch
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


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = ("input_ids", "attention_mask", "position_ids")
    # use_cache=False: no KV cache in training, and packed rows stay apart only without it.
    return {k: batch[k] for k in keys if k in batch} | {"use_cache": False}


def forward_loss(model, batch: dict[str, torch.Tensor], trained_only: bool = True) -> tuple[torch.Tensor, int]:
    """Summed next-token loss over trained tokens of one micro-batch, and their count."""
    if not (trained_only and has_plain_head(model)):
        return causal_lm_sum(model(**model_inputs(batch)).logits, batch["labels"])
    causal = causal_lm_of(model)
    hidden = causal.get_decoder()(**model_inputs(batch)).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    logits = causal.get_output_embeddings()(hidden[:, :-1][keep])
    return token_ce_sum(logits, targets[keep])


@torch.no_grad()
def mean_loss(model, rows, pad_id: int, batch_size: int = 8, packed: bool = True) -> tuple[float, int]:
    """Mean loss per trained token over rendered rows, `batch_size` rows at a time, and the token count
    (nan without any). What held-out and answer losses are, wherever they are measured."""
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        loss_sum, n = forward_loss(model, make_batch(rows[start:start + batch_size], pad_id, packed))
        total, count = total + float(loss_sum), count + int(n)
    return (total / count if count else math.nan), count
