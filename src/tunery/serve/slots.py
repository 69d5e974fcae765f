"""A KV cache with one slot per running sequence, so that sequences join and leave a batch between steps.

transformers' own caches hold one batch whose rows start and end together. A server needs rows that
come and go: a request that arrives while others decode must join them at the next step, and a
finished or abandoned one must give its memory back at once. `SlotCache` keeps, per layer, keys and
values of shape [slots, kv_heads, capacity, head_dim]; running sequence i owns slot i (the engine keeps
the running rows packed at the front, moving the last row into a freed slot), so a decode step reads
`keys[:rows, :, :longest]` as a view, without copying the cache.

Before each forward pass the engine says what the pass writes (`plan_prefill` or `plan_decode`); the
model's attention layers then call `update` exactly as they call any transformers cache. Masks come
from the engine as 4-D boolean tensors (transformers passes a 4-D mask through unchanged), so rows of
different lengths share one pass.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class SlotLayer(CacheLayerMixin):
    """The keys and values of one attention layer, for every slot."""

    is_compileable = False
    is_sliding = False

    def __init__(self, owner: "SlotCache"):
        super().__init__()
        self.owner = owner
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        slots, capacity = self.owner.slots, self.owner.capacity
        heads = key_states.shape[1]
        self.keys = key_states.new_zeros((slots, heads, capacity, key_states.shape[-1]))
        self.values = value_states.new_zeros((slots, heads, capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.keys is None:
            self.lazy_initialization(key_states, value_states)
        plan = self.owner.plan
        if plan.kind == "prefill":
            # Fresh slots: the new states are the whole context, so attention reads them as they are.
            rows, length = plan.rows, key_states.shape[2]
            self.keys[rows, :, :length] = key_states
            self.values[rows, :, :length] = value_states
            return key_states, value_states
        count = key_states.shape[0]
        index = torch.arange(count)
        self.keys[index, :, plan.positions] = key_states[:, :, 0]
        self.values[index, :, plan.positions] = value_states[:, :, 0]
        return self.keys[:count, :, : plan.length], self.values[:count, :, : plan.length]

    def grow(self, capacity: int) -> None:
        if self.keys is None:
            return
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros((*old.shape[:2], capacity, old.shape[-1]))
            new[:, :, : old.shape[2]] = old
            setattr(self, name, new)

    def move(self, source: int, target: int, length: int) -> None:
        if self.keys is not None:
            self.keys[target, :, :length] = self.keys[source, :, :length]
            self.values[target, :, :length] = self.values[source, :, :length]

    # transformers asks these of a cache; the engine passes positions and masks itself, so they are
    # only consulted when a caller does not.
    def get_seq_length(self) -> int:
        return 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return query_length, 0

    def get_max_length(self) -> int:
        return self.owner.capacity


class _Plan:
    """What the next forward pass writes: fresh slots from position 0, or one token per running row."""

    def __init__(self, kind: str, rows=None, positions: torch.Tensor | None = None, length: int = 0):
        self.kind, self.rows, self.positions, self.length = kind, rows, positions, length


class SlotCache(Cache):
    """Keys and values of `slots` sequences, each up to `limit` tokens long (capacity grows by doubling)."""

    def __init__(self, layers: int, slots: int, limit: int, start: int = 256):
        self.slots, self.limit = slots, limit
        self.capacity = min(start, limit)
        self.plan = _Plan("none")
        super().__init__(layers=[SlotLayer(self) for _ in range(layers)])

    def ensure(self, length: int) -> None:
        """Make room for sequences of `length` tokens (at most `limit`)."""
        if length > self.limit:
            raise ValueError(f"a sequence of {length} tokens does not fit the cache limit of {self.limit}")
        if length <= self.capacity:
            return
        capacity = self.capacity
        while capacity < length:
            capacity *= 2
        self.capacity = min(capacity, self.limit)
        for layer in self.layers:
            layer.grow(self.capacity)

    def plan_prefill(self, first_row: int, count: int, length: int) -> None:
        """The next pass fills slots first_row .. first_row+count-1 with `length` positions from 0."""
        self.ensure(length)
        self.plan = _Plan("prefill", rows=slice(first_row, first_row + count))

    def plan_decode(self, positions: torch.Tensor, length: int) -> None:
        """The next pass writes one token per row 0..len(positions)-1 at `positions`, and attention reads
        the first `length` positions of each of those slots."""
        self.ensure(length)
        self.plan = _Plan("decode", positions=positions, length=length)

    def move(self, source: int, target: int, length: int) -> None:
        """Copy the first `length` positions of slot `source` into slot `target` (packing the rows)."""
        for layer in self.layers:
            layer.move(source, target, length)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return query_length, 0


def prefill_mask(lengths: list[int]) -> torch.Tensor:
    """[rows, 1, width, width] boolean: causal attention within each right-padded prompt."""
    width = max(lengths)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    real = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]  # [rows, width]
    return (causal[None] & real[:, None, :])[:, None]


def decode_mask(positions: torch.Tensor, length: int) -> torch.Tensor:
    """[rows, 1, 1, length] boolean: each row attends to its own positions 0..positions[row]."""
    return (torch.arange(length)[None, :] <= positions[:, None])[:, None, None, :]
