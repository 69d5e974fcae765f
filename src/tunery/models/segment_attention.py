"""Attention over the segments of a packed sequence, each only as large as what it may see.

A packed training piece is one sequence holding several rows (and, with `training.share_prefix`,
prefixes those rows share). Given as a 4D mask, SDPA computes every query against every key of the
whole piece and masks most of it away: on the quickstart's pieces of about 450 tokens, a row of 55
tokens that sees 75 keys still costs 450. Here the piece is described as segments instead, each a
span of queries that sees an optional prefix span and, causally, itself; each segment is one SDPA
call of exactly its own size, and the outputs are put back in order. The keys and values a token
sees are the same, so the output is the same (`tests/invariant/test_batching_invariants.py`).

It runs where it was measured to pay: on a CPU (on a GPU many small calls would cost more than the
masked work they save, untested), for the decoder families whose attention layers hand the standard
arguments to transformers' attention interface, and only while a forward pass that carries segments
runs (`segments_attention`): the model's own implementation is switched back at once, so generation
and anything else see the model as it was loaded.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import torch

NAME = "tunery_segments"
# Families whose attention layers call the interface with (module, q, k, v, mask, dropout, scaling).
FAMILIES = {"llama", "mistral", "qwen2", "qwen3", "olmo2", "smollm3"}


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      tunery_segments=None, **kwargs):
    """query [1, H, T, d], key/value [1, Hkv, T, d] -> ([1, T, H, d], None), segment by segment.

    `tunery_segments`: rows (query start, query length, prefix start, prefix length) that cover the
    sequence's positions in order, once each."""
    if tunery_segments is None:
        raise RuntimeError("tunery_segments attention needs the batch's segments")
    gqa = query.shape[1] != key.shape[1]  # grouped-query attention: SDPA maps the heads itself
    outs = []
    for start, length, prefix_at, prefix_len in tunery_segments.tolist():
        q = query[:, :, start:start + length]
        k, v = key[:, :, start:start + length], value[:, :, start:start + length]
        if prefix_len == 0:
            outs.append(torch.nn.functional.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa))
            continue
        k = torch.cat([key[:, :, prefix_at:prefix_at + prefix_len], k], dim=2)
        v = torch.cat([value[:, :, prefix_at:prefix_at + prefix_len], v], dim=2)
        mask = _prefix_mask(length, prefix_len, query.dtype, query.device)
        outs.append(torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling, enable_gqa=gqa))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


@functools.lru_cache(maxsize=512)
def _prefix_mask(length: int, prefix_len: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[length, prefix_len + length], 0 where a query may look and -inf elsewhere: the whole prefix,
    then causally its own span. Additive, as SDPA would otherwise convert a boolean mask at every call;
    made once per shape (every layer, and the rows of the same length, ask again)."""
    allowed = torch.ones(length, prefix_len + length, dtype=torch.bool, device=device)
    allowed[:, prefix_len:] = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))


def _register() -> None:
    from transformers import AttentionInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, segment_attention)


def _text_config(model):
    config = model.config
    return getattr(config, "text_config", None) or config


def can_segment(model, device: torch.device) -> bool:
    """Whether `model` (a causal LM, not its PEFT wrapper) may take segments on `device`: every layer
    must attend to the whole context, the rule a shared prefix already follows (`can_share`)."""
    from tunery.shared_prefix import can_share

    config = _text_config(model)
    return (device.type == "cpu" and config.model_type in FAMILIES
            and config._attn_implementation == "sdpa" and can_share(model))


@contextmanager
def segments_attention(model):
    """The model's attention switched to segments for the passes inside, and back after."""
    _register()
    config = _text_config(model)
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
