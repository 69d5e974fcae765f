"""From rendered rows to the tensors a forward pass takes: the step plan, padding-free packing,
right-padded collation, and cutting a micro-batch into pieces by tokens.

Each is a pure function of its arguments, so that every method batches the same way and a resumed run
rebuilds exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

IGNORE = -100  # label value that carries no loss


@dataclass(frozen=True)
class StepPlan:
    """How the examples are cut into micro-batches and optimizer steps."""

    n_examples: int
    batch_size: int
    grad_accum: int
    total_steps: int
    seed: int

    @property
    def micro_per_epoch(self) -> int:
        return math.ceil(self.n_examples / self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.micro_per_epoch / self.grad_accum)


def make_plan(n_examples: int, batch_size: int, grad_accum: int, epochs: float,
              max_steps: int | None, seed: int) -> StepPlan:
    """The step plan: `max_steps` wins over `epochs`; a fractional epoch count is rounded up to a step."""
    plan = StepPlan(n_examples, batch_size, grad_accum, 0, seed)
    total = max_steps if max_steps is not None else math.ceil(epochs * plan.steps_per_epoch)
    return StepPlan(n_examples, batch_size, grad_accum, max(1, total), seed)


def epoch_order(plan: StepPlan, epoch: int) -> list[int]:
    """The shuffled example order of one epoch: a pure function of (seed, epoch)."""
    gen = torch.Generator().manual_seed(plan.seed * 1_000_003 + epoch)
    return torch.randperm(plan.n_examples, generator=gen).tolist()


def micro_batches_for_step(plan: StepPlan, step: int) -> list[list[int]]:
    """Example indices of each micro-batch of optimizer step `step` (0-based).

    Depends only on the plan and the step, which is what makes resume exact: no iterator state to save.
    """
    epoch, within = divmod(step, plan.steps_per_epoch)
    order = epoch_order(plan, epoch)
    first = within * plan.grad_accum
    last = min(first + plan.grad_accum, plan.micro_per_epoch)
    return [order[m * plan.batch_size:(m + 1) * plan.batch_size] for m in range(first, last)]


def split_by_tokens(rows, limit: int | None, size_of=lambda row: len(row.ids)) -> list[list]:
    """Consecutive pieces of `rows` with at most `limit` tokens each (a longer row alone), in order;
    `size_of(row)` counts a row's tokens."""
    if limit is None:
        return [list(rows)]
    pieces, current, size = [], [], 0
    for row in rows:
        tokens = size_of(row)
        if current and size + tokens > limit:
            pieces.append(current)
            current, size = [], 0
        current.append(row)
        size += tokens
    return pieces + ([current] if current else [])


def bounded_batches(rows, max_rows: int, max_tokens: int, padded: bool,
                    size_of=lambda row: len(row.ids)) -> list[list]:
    """Consecutive batches of `rows`, in order, of at most `max_rows` rows and at most `max_tokens`
    tokens as the pass holds them: the rows' sum when packed, rows x the longest when `padded` (a row
    over the budget goes alone). What bounds an evaluation pass's memory whatever its batch size: many
    short rows go together, a few long ones at a time."""
    batches, current, longest, total = [], [], 0, 0
    for row in rows:
        tokens = size_of(row)
        held = (len(current) + 1) * max(longest, tokens) if padded else total + tokens
        if current and (len(current) == max_rows or held > max_tokens):
            batches.append(current)
            current, longest, total = [], 0, 0
        current.append(row)
        longest, total = max(longest, tokens), total + tokens
    return batches + ([current] if current else [])


def collate(rows, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rendered examples into `input_ids`, `attention_mask` and `labels` (IGNORE where untrained)."""
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.ids)
        ids[i, :n] = torch.tensor(row.ids, dtype=torch.long)
        attention[i, :n] = 1
        trained = torch.tensor(row.trained, dtype=torch.bool)
        labels[i, :n] = torch.where(trained, ids[i, :n], torch.full_like(ids[i, :n], IGNORE))
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def pack(rows) -> dict[str, torch.Tensor]:
    """Padding-free batch: every row concatenated into one sequence, positions restarting per row.

    With `position_ids` restarting and no attention mask, transformers keeps attention inside each
    sequence (only with `use_cache=False`), so the loss equals the padded batch's, without the work
    spent on padding. The first token of each row gets no label: the token before it belongs to
    another sequence.
    """
    ids = torch.tensor([t for r in rows for t in r.ids], dtype=torch.long).unsqueeze(0)
    positions = torch.cat([torch.arange(len(r.ids)) for r in rows]).unsqueeze(0)
    labels = torch.cat([
        torch.tensor([IGNORE] + [t if m else IGNORE for t, m in zip(r.ids[1:], r.trained[1:])])
        for r in rows
    ]).unsqueeze(0)
    starts = [0]
    for r in rows[:-1]:
        starts.append(starts[-1] + len(r.ids))
    segments = [(start, len(r.ids), 0, 0) for start, r in zip(starts, rows)]
    return {"input_ids": ids, "position_ids": positions, "labels": labels, "segments": _segments(segments)}


def _segments(spans: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """[S, 4]: per segment of a packed sequence, in order, (query start, query length, prefix start,
    prefix length): the span of tokens, and the earlier span (a shared prefix) they see besides
    themselves. How `models.segment_attention` computes a piece's attention without a mask."""
    return torch.tensor(spans, dtype=torch.long).view(-1, 4)


def count_trained(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that carry loss: labels set at positions 1.. (position 0 has nothing to predict it)."""
    if "target_ids" in batch:  # a shared-prefix pair batch lists its targets
        return len(batch["target_ids"])
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def count_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Real (non-padding) tokens of a batch, packed or padded."""
    if "real_tokens" in batch:  # a shared-prefix pair batch: its attention mask is 4D
        return int(batch["real_tokens"])
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def make_batch(rows, pad_id: int, packed: bool) -> dict[str, torch.Tensor]:
    """The one place batches are built: padding-free (packed) or right-padded."""
    return pack(rows) if packed else collate(rows, pad_id)


def make_sequence_batch(rows, pad_id: int, packed: bool) -> dict[str, torch.Tensor]:
    """`make_batch` of `rows`, plus which row each trained target token belongs to (`target_seq`, in
    the order the targets are listed: row by row, left to right) and the row count (`sequences`), so
    that per-row log-probs can be summed from one forward pass over all of them."""
    batch = make_batch(rows, pad_id, packed)
    counts = [sum(row.trained[1:]) for row in rows]  # position 0 predicts nothing
    batch["target_seq"] = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(counts, dtype=torch.long))
    batch["sequences"] = torch.tensor(len(rows))
    return batch


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two rows share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _shared_row(first, second, common: int, width: int) -> tuple[list[int], list[int], torch.Tensor]:
    """One pair's tokens (`first`, then `second` after the prefix it shares with `first`), their
    positions, and who attends to whom [width, width]: `first` causally; `second`'s own tokens to the
    shared prefix and causally to themselves, never to `first`'s answer; padding only to itself."""
    n_first, n_second = len(first.ids), len(second.ids) - common
    ids = first.ids + second.ids[common:]
    positions = list(range(n_first)) + list(range(common, len(second.ids)))
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = torch.zeros(width, width, dtype=torch.bool)
    mask[:n_first, :n_first] = causal[:n_first, :n_first]
    end = n_first + n_second
    mask[n_first:end, :common] = True
    mask[n_first:end, n_first:end] = causal[:n_second, :n_second]
    pad = torch.arange(end, width)
    mask[pad, pad] = True  # a padding query attends to itself (a row with no key gives NaN)
    return ids, positions, mask


def make_shared_pair_batch(pairs: list[tuple], pad_id: int) -> dict[str, torch.Tensor]:
    """Both answers of each pair in one row, their common prefix (the prompt) put through the model once.

    Row i holds `first` whole, then `second` from where it stops matching `first`; positions restart
    there at the prefix's length, and a 4D attention mask keeps `second` from seeing `first`'s answer,
    so each answer's tokens get exactly the log-probs of their own sequence. A trained token is named by
    the flat position that predicts it (`target_pos`, into rows x width) and its id (`target_ids`): the
    last shared position predicts the first token of both answers. `target_seq` and `sequences` are as
    in `make_sequence_batch` (sequence 2i is pair i's first answer, 2i + 1 its second), so
    `sequence_logps` reads this batch like any other.
    """
    commons = [common_prefix(first.ids, second.ids) for first, second in pairs]
    width = max(len(f.ids) + len(s.ids) - c for (f, s), c in zip(pairs, commons))
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(pairs), width), dtype=torch.long)
    mask = torch.zeros((len(pairs), 1, width, width), dtype=torch.bool)
    target_pos, target_ids, target_seq = [], [], []
    for i, ((first, second), common) in enumerate(zip(pairs, commons)):
        row_ids, row_pos, mask[i, 0] = _shared_row(first, second, common, width)
        ids[i, :len(row_ids)] = torch.tensor(row_ids)
        positions[i, :len(row_pos)] = torch.tensor(row_pos)
        base = i * width
        for j in range(1, len(first.ids)):
            if first.trained[j]:
                target_pos.append(base + j - 1), target_ids.append(first.ids[j]), target_seq.append(2 * i)
        for j in range(1, len(second.ids)):
            if second.trained[j]:
                at = j - 1 if j - 1 < common else len(first.ids) + j - 1 - common
                target_pos.append(base + at), target_ids.append(second.ids[j]), target_seq.append(2 * i + 1)
    return {"input_ids": ids, "position_ids": positions, "attention_mask": mask,
            "target_pos": torch.tensor(target_pos, dtype=torch.long),
            "target_ids": torch.tensor(target_ids, dtype=torch.long),
            "target_seq": torch.tensor(target_seq, dtype=torch.long),
            "sequences": torch.tensor(2 * len(pairs)),
            "real_tokens": torch.tensor(sum(len(f.ids) + len(s.ids) - c for (f, s), c in zip(pairs, commons)))}


# Rows of a packed piece that share at least this many leading tokens put them through the model once.
# Below it the saving is a handful of tokens against a larger attention mask.
MIN_SHARED_PREFIX = 16


@dataclass(frozen=True)
class _Group:
    rows: list[int]  # indices into the piece's rows, in order
    shared: int  # leading tokens every row of the group shares (0: one row, laid out whole)


def prefix_groups(rows, min_shared: int = MIN_SHARED_PREFIX) -> list[_Group]:
    """The rows of a piece grouped by a common leading prefix of at least `min_shared` tokens (a system
    prompt, an instruction, few-shot examples), in order of first appearance. Each row keeps at least
    one token of its own; a row that shares nothing worth sharing is a group of its own."""
    by_key: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        key = tuple(row.ids[:min_shared]) if len(row.ids) > min_shared else ("alone", i)
        by_key.setdefault(key, []).append(i)
    groups = []
    for members in by_key.values():
        shared = 0
        if len(members) > 1:
            first = rows[members[0]].ids
            shared = min(min(common_prefix(first, rows[i].ids) for i in members[1:]),
                         min(len(rows[i].ids) for i in members) - 1)
        if shared >= min_shared:
            groups.append(_Group(members, shared))
        else:
            groups.extend(_Group([i], 0) for i in members)
    return groups


def grouped(rows, min_shared: int = MIN_SHARED_PREFIX) -> list:
    """`rows` reordered so that the rows of each prefix group are together (groups in order of first
    appearance, rows in order within). `pack_shared` then lays the rows out in their own order, so
    their trained tokens are listed in the order of the positions that predict them and the logits
    need no reordering; the sum a step's loss is does not depend on the order."""
    return [rows[i] for group in prefix_groups(rows, min_shared) for i in group.rows]


def shared_length(rows, min_shared: int = MIN_SHARED_PREFIX) -> int:
    """Tokens a piece of `rows` puts through the model when each group's prefix goes through once."""
    total = sum(len(row.ids) for row in rows)
    return total - sum((len(g.rows) - 1) * g.shared for g in prefix_groups(rows, min_shared))


def pack_shared(rows, min_shared: int = MIN_SHARED_PREFIX) -> dict[str, torch.Tensor]:
    """`pack`, with the prefix that several rows share put through the model once.

    The sequence holds, group by group, the shared prefix and then each row's own tokens; positions
    continue from the prefix's length. Who sees whom is given twice, as a 4D attention mask and as
    segments (`_segments`): each row's tokens see the prefix and, causally, themselves, nothing else.
    A token therefore sees exactly what it sees in its own sequence, so the loss and every gradient
    are the unshared ones (the prefix's gradient collects every row's). Trained tokens are listed as
    in `make_shared_pair_batch` (`target_pos`, `target_ids`), row by row in the rows' order, so
    per-token tensors built in that order line up; a position of the prefix predicts its next token
    once per row that trains it. Rows in `grouped` order list their targets in position order.
    `real_tokens` counts the rows' own tokens, as the data holds them."""
    ids, positions, spans = _shared_layout(rows, prefix_groups(rows, min_shared))
    target_pos, target_ids = [], []
    for row, (prefix_at, shared, own_at, _) in zip(rows, spans):
        for j in range(1, len(row.ids)):
            if row.trained[j]:
                target_pos.append(prefix_at + j - 1 if j - 1 < shared else own_at + j - 1 - shared)
                target_ids.append(row.ids[j])
    return {"input_ids": torch.tensor([ids], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "attention_mask": _shared_mask(len(ids), spans)[None, None],  # for models that cannot take segments
            "segments": _segments(_shared_segments(spans)),
            "target_pos": torch.tensor(target_pos, dtype=torch.long),
            "target_ids": torch.tensor(target_ids, dtype=torch.long),
            "real_tokens": torch.tensor(sum(len(row.ids) for row in rows))}


def _shared_layout(rows, groups: list[_Group]) -> tuple[list[int], list[int], list[tuple[int, int, int, int]]]:
    """(token ids, positions, per row in the rows' order: (prefix start, prefix length, own start, own
    end)) of the rows laid out group by group, each group's prefix once."""
    ids: list[int] = []
    positions: list[int] = []
    spans: dict[int, tuple[int, int, int, int]] = {}
    for group in groups:
        prefix_at = len(ids)
        ids += rows[group.rows[0]].ids[:group.shared]
        positions += range(group.shared)
        for i in group.rows:
            own = rows[i].ids[group.shared:]
            spans[i] = (prefix_at, group.shared, len(ids), len(ids) + len(own))
            ids += own
            positions += range(group.shared, len(rows[i].ids))
    return ids, positions, [spans[i] for i in range(len(rows))]


def _shared_mask(width: int, spans) -> torch.Tensor:
    """[width, width] bool: a prefix sees itself causally; a row's own tokens see its prefix and
    themselves causally."""
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = torch.zeros(width, width, dtype=torch.bool)
    for prefix_at, shared, own_at, end in spans:
        mask[prefix_at:prefix_at + shared, prefix_at:prefix_at + shared] = causal[:shared, :shared]
        mask[own_at:end, prefix_at:prefix_at + shared] = True
        mask[own_at:end, own_at:end] = causal[:end - own_at, :end - own_at]
    return mask


def _shared_segments(spans) -> list[tuple[int, int, int, int]]:
    """The layout's segments in sequence order: each prefix once (seeing itself), each row's own
    tokens (seeing their prefix)."""
    segments, prefixes = [], set()
    for prefix_at, shared, own_at, end in sorted(spans, key=lambda span: span[2]):
        if shared and prefix_at not in prefixes:
            prefixes.add(prefix_at)
            segments.append((prefix_at, shared, 0, 0))
        segments.append((own_at, end - own_at, prefix_at, shared))
    return segments


def split_shared(rows, limit: int | None, min_shared: int = MIN_SHARED_PREFIX) -> list[list]:
    """`split_by_tokens` counting a piece as `pack_shared` lays it out: a shared prefix once."""
    if limit is None:
        return [list(rows)]
    pieces, current = [], []
    for row in rows:
        if current and shared_length(current + [row], min_shared) > limit:
            pieces.append(current)
            current = []
        current.append(row)
    return pieces + ([current] if current else [])
