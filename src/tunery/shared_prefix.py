"""The prompt prefix every row shares (a system prompt, few-shot examples), computed once.

Evaluation prompts usually start with the same tokens: the chat template's system turn, and in the
few-shot baseline the same examples. Batched generation would run those tokens through the model again
for every row. Here the common token prefix is run once (batch 1), its KV cache copied to each batch,
and only the rest of each prompt is computed. Each row is laid out as prefix, then padding, then its
own tokens; the attention mask hides the padding and positions count only unmasked tokens, so every
token sees what it sees in a row without padding (tests: the same answers as unshared generation).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

MIN_SHARED = 16  # below this many tokens the copy costs about what it saves


@dataclass
class SharedPrefix:
    ids: list[int]
    cache: object  # the model's KV cache for `ids`, batch 1
    cache_name: str  # the keyword `generate` takes it by ("cache" in newer transformers)

    def batch(self, rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(input_ids, attention_mask, generate keywords) for rows that all start with the prefix."""
        n = len(self.ids)
        rest, rest_mask = left_pad([row[n:] for row in rows], pad_id)
        ids = torch.cat([torch.tensor([self.ids] * len(rows), dtype=torch.long), rest], dim=1)
        mask = torch.cat([torch.ones(len(rows), n, dtype=torch.long), rest_mask], dim=1)
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(len(rows))
        return ids, mask, {self.cache_name: cache}


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with pads on the left, so that every row's last prompt token aligns."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


def common_prefix(rows: list[list[int]]) -> list[int]:
    """The longest token prefix of every row, leaving each row at least one token of its own."""
    if not rows:
        return []
    limit = min(len(r) for r in rows) - 1
    first, n = rows[0], 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return first[:n]


def can_share(model) -> bool:
    """Only models whose every layer attends to the whole context keep a plain cache that can be
    copied and repeated per row; sliding-window layers keep another kind."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return False
    return all(kind == "full_attention" for kind in getattr(text, "layer_types", None) or ["full_attention"])


@torch.inference_mode()
def shared_prefix(model, rows: list[list[int]], device) -> SharedPrefix | None:
    """The prefix of `rows` with its KV cache, or None when there is nothing worth sharing."""
    if len(rows) < 2 or not can_share(model):
        return None
    ids = common_prefix(rows)
    if len(ids) < MIN_SHARED:
        return None
    out = model(input_ids=torch.tensor([ids], device=device), use_cache=True)
    new_name = "cache" in out.keys()  # transformers renamed past_key_values to cache in 5.2x
    cache = out["cache"] if new_name else out["past_key_values"]
    if not hasattr(cache, "batch_repeat_interleave"):
        return None
    return SharedPrefix(ids, cache, "cache" if new_name else "past_key_values")
