"""Invariants of the fast paths: they compute the same loss and gradients as the plain ones."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_model
from loop_helpers import make_loop, prefixed_rows, synthetic_rows, tiny_config
from tunery.data import batching as common
from tunery.models.adapters import prepare_trainable
from tunery.models.forward import forward_loss


def loss_and_grads(model, batch, trained_only):
    model.zero_grad(set_to_none=True)
    loss, n = forward_loss(model, batch, trained_only=trained_only)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), n, grads


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_packed_equals_padded_and_trained_only_equals_full_head(smol_tokenizer, adapter):
    cfg = tiny_config().model_copy(update={"adapter": adapter})
    cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"dropout": 0.0})})
    model = prepare_trainable(make_tiny_model(len(smol_tokenizer)), cfg).train()
    rows = synthetic_rows(5, seed=3)
    padded = common.collate(rows, pad_id=2)
    packed = common.pack(rows)
    assert packed["input_ids"].shape == (1, sum(len(r.ids) for r in rows))
    assert common.count_trained(packed) == common.count_trained(padded) > 0
    assert common.count_tokens(packed) == common.count_tokens(padded)

    reference = loss_and_grads(model, padded, trained_only=False)  # padded, full head
    for batch, trained_only in ((padded, True), (packed, False), (packed, True)):
        loss, n, grads = loss_and_grads(model, batch, trained_only)
        assert n == reference[1]
        assert loss == pytest.approx(reference[0], rel=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference[2][name], rtol=1e-4, atol=1e-6)


def test_packed_rows_do_not_see_each_other(smol_tokenizer):
    model = make_tiny_model(len(smol_tokenizer))
    rows = synthetic_rows(2, seed=5)
    changed = [type(rows[0])([7] * len(rows[0].ids), rows[0].trained), rows[1]]
    with torch.no_grad():
        a, _ = forward_loss(model, common.pack([rows[1]]))
        b, _ = forward_loss(model, common.pack(changed))
        c, _ = forward_loss(model, common.pack([changed[0]]))
    # the second row's loss is unchanged by what the first row holds
    assert float(b - c) == pytest.approx(float(a), rel=1e-5)


def test_split_by_tokens_keeps_order_and_the_limit():
    rows = synthetic_rows(12, seed=7)
    pieces = common.split_by_tokens(rows, 40)
    assert [r for piece in pieces for r in piece] == rows  # every row once, in order
    assert all(sum(len(r.ids) for r in piece) <= 40 for piece in pieces) and len(pieces) > 2
    long_row = type(rows[0])(list(range(3, 60)), [True] * 57)
    assert common.split_by_tokens([rows[0], long_row, rows[1]], 40) == [[rows[0]], [long_row], [rows[1]]]
    assert common.split_by_tokens(rows, None) == [rows]


def test_bounded_batches_keep_order_rows_and_the_token_budget():
    rows = synthetic_rows(12, seed=7)
    sizes = [len(r.ids) for r in rows]
    for padded in (True, False):
        batches = common.bounded_batches(rows, 4, 60, padded)
        assert [r for b in batches for r in b] == rows  # every row once, in order
        assert all(len(b) <= 4 for b in batches)
        held = [len(b) * max(len(r.ids) for r in b) if padded else sum(len(r.ids) for r in b) for b in batches]
        assert all(h <= 60 for h in held)
    # Padded rows cost rows x the longest: a long row forces the next ones out of its batch.
    assert common.bounded_batches([5, 5, 30, 5, 5], 8, 40, True, size_of=int) == [[5, 5], [30], [5, 5]]
    assert common.bounded_batches([5, 5, 30, 5, 5], 8, 40, False, size_of=int) == [[5, 5, 30], [5, 5]]
    # A row over the budget goes alone; without a binding budget the rows cap the batch.
    assert common.bounded_batches([90, 1], 8, 40, False, size_of=int) == [[90], [1]]
    assert common.bounded_batches(sizes, 5, 10 ** 6, True, size_of=int) == [sizes[:5], sizes[5:10], sizes[10:]]


def test_a_loss_pass_gives_the_same_loss_in_budgeted_batches(smol_tokenizer, monkeypatch):
    """`mean_loss` cuts its rows by LOSS_PASS_TOKENS whatever the batch size: the loss and the count
    are those of one row at a time."""
    from tunery.models import forward

    torch.manual_seed(0)
    model = make_tiny_model(len(smol_tokenizer))
    model.eval()
    rows = synthetic_rows(10, seed=3)
    alone = forward.mean_loss(model, rows, smol_tokenizer.pad_token_id, batch_size=1, packed=False)
    seen = []
    real = forward.make_batch
    monkeypatch.setattr(forward, "make_batch", lambda b, *a: seen.append(len(b)) or real(b, *a))
    monkeypatch.setattr(forward, "LOSS_PASS_TOKENS", 48)
    cut = forward.mean_loss(model, rows, smol_tokenizer.pad_token_id, batch_size=32, packed=False)
    assert cut[1] == alone[1] and cut[0] == pytest.approx(alone[0], rel=1e-5)
    assert sum(seen) == 10 and len(seen) > 2 and max(seen) < 10  # the budget, not batch 32, cut the rows


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_a_step_in_token_pieces_equals_the_step_in_one_piece(smol_tokenizer, adapter):
    from tunery.trainers import loop

    def one_step(chunk_tokens):
        torch.manual_seed(0)
        cfg = tiny_config(batch_size=8, chunk_tokens=chunk_tokens).model_copy(update={"adapter": adapter})
        cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"dropout": 0.0})})
        s = make_loop(smol_tokenizer, cfg, synthetic_rows(16, seed=2))
        pieces = len(loop.step_pieces(s, 0))
        result = loop.accumulate(s, 0)
        loss, trained, tokens = result.loss, result.units, result.tokens
        grads = {k: p.grad.clone() for k, p in s.model.named_parameters() if p.requires_grad}
        return pieces, loss, trained, tokens, grads

    whole, split = one_step(None), one_step(32)
    assert whole[0] == 1 and split[0] >= 3  # 8 rows of 6-20 tokens: several pieces of <= 32 tokens
    assert split[2:4] == whole[2:4]
    assert split[1] == pytest.approx(whole[1], rel=1e-5)
    for name, grad in whole[4].items():
        torch.testing.assert_close(split[4][name], grad, rtol=1e-4, atol=1e-6)


def count_segment_passes(monkeypatch) -> list:
    """Calls of the segment attention (one per layer and pass), recorded as they happen."""
    from transformers import AttentionInterface

    from tunery.models import segment_attention as seg

    calls, real = [], seg.segment_attention
    seg._register()
    monkeypatch.setitem(AttentionInterface._global_mapping, seg.NAME,
                        lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    return calls


@pytest.mark.parametrize("segments", [True, False])
@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_a_shared_prefix_gives_the_loss_and_gradients_of_every_row_whole(smol_tokenizer, adapter, segments,
                                                                         monkeypatch):
    """Through the segment attention (each row's span against the prefix and itself) and through the
    4D mask a model without it takes, the same loss and gradients as the padded batch."""
    from tunery.models import forward

    calls = count_segment_passes(monkeypatch)
    if not segments:
        monkeypatch.setattr(forward, "can_segment", lambda model, device: False)
    cfg = tiny_config().model_copy(update={"adapter": adapter})
    cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"dropout": 0.0})})
    model = prepare_trainable(make_tiny_model(len(smol_tokenizer)), cfg).train()
    rows = prefixed_rows()
    shared = common.pack_shared(rows)
    whole = sum(len(r.ids) for r in rows)
    groups = common.prefix_groups(rows)
    assert [(g.rows, g.shared) for g in groups] == [([0, 2, 4], 20), ([1, 5], 24), ([3], 0), ([6, 7], 38)]
    assert shared["input_ids"].shape == (1, whole - 2 * 20 - 24 - 38) == (1, common.shared_length(rows))
    assert common.count_trained(shared) == common.count_trained(common.pack(rows)) > 0
    assert common.count_tokens(shared) == whole  # throughput counts the data's tokens

    reference = loss_and_grads(model, common.collate(rows, pad_id=2), trained_only=False)
    assert not calls  # the padded batch has no segments
    for batch, trained_only in ((shared, True), (shared, False)):
        loss, n, grads = loss_and_grads(model, batch, trained_only)
        assert n == reference[1]
        assert loss == pytest.approx(reference[0], rel=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference[2][name], rtol=1e-4, atol=1e-6)
    assert len(calls) == (4 if segments else 0)  # 2 layers x 2 passes
    assert model.config._attn_implementation == "sdpa"  # switched back after every pass


def test_segments_cover_the_sequence_once_in_order_and_name_each_rows_prefix():
    rows = prefixed_rows()
    shared = common.pack_shared(rows)
    segments = shared["segments"].tolist()
    starts = [start for start, *_ in segments]
    assert starts == sorted(starts) and sum(length for _, length, *_ in segments) == shared["input_ids"].shape[1]
    assert all(a[0] + a[1] == b[0] for a, b in zip(segments, segments[1:]))  # no gap, no overlap
    # prompt_a's group: its 20 tokens once (seeing only themselves), then rows 0, 2, 4 each seeing them
    assert segments[:4] == [[0, 20, 0, 0], [20, 9, 0, 20], [29, 12, 0, 20], [41, 5, 0, 20]]
    mask = shared["attention_mask"][0, 0]
    for start, length, prefix_at, prefix_len in segments:  # the mask says the same as the segments
        for i in range(start, start + length):
            seen = set(torch.nonzero(mask[i]).flatten().tolist())
            assert seen == set(range(prefix_at, prefix_at + prefix_len)) | set(range(start, i + 1))
    plain = common.pack(rows)["segments"].tolist()
    assert [length for _, length, *_ in plain] == [len(r.ids) for r in rows] and all(p[3] == 0 for p in plain)


def test_the_attention_switches_back_when_a_pass_fails(smol_tokenizer, monkeypatch):
    from transformers import AttentionInterface

    from tunery.models import segment_attention as seg

    model = make_tiny_model(len(smol_tokenizer))

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    seg._register()
    monkeypatch.setitem(AttentionInterface._global_mapping, seg.NAME, broken)
    with pytest.raises(RuntimeError, match="boom"):
        forward_loss(model, common.pack(synthetic_rows(3)))
    assert model.config._attn_implementation == "sdpa"
    monkeypatch.undo()
    batch = common.pack(synthetic_rows(3))
    batch.pop("segments")  # a batch without segments takes the model's own attention
    calls = count_segment_passes(monkeypatch)
    forward_loss(model, batch)
    assert calls == []


def test_rows_under_a_shared_prefix_do_not_see_each_other(smol_tokenizer):
    model = make_tiny_model(len(smol_tokenizer))
    rows = prefixed_rows()
    changed = list(rows)
    changed[0] = type(rows[0])(rows[0].ids[:20] + [7] * (len(rows[0].ids) - 20), rows[0].trained)
    with torch.no_grad():
        per_row = [float(forward_loss(model, common.pack([r]))[0]) for r in rows]
        before, _ = forward_loss(model, common.pack_shared(rows))
        after, _ = forward_loss(model, common.pack_shared(changed))
        alone, _ = forward_loss(model, common.pack([changed[0]]))
    assert float(before) == pytest.approx(sum(per_row), rel=1e-5)
    assert float(after) == pytest.approx(sum(per_row) - per_row[0] + float(alone), rel=1e-5)


def test_prefix_groups_leave_every_row_a_token_and_ignore_short_prefixes():
    Row = type(synthetic_rows(1)[0])
    same = Row(list(range(3, 23)), [False] * 19 + [True])
    groups = common.prefix_groups([same, same])
    assert [(g.rows, g.shared) for g in groups] == [([0, 1], 19)]  # the last token stays each row's own
    short = [Row(list(range(3, 18)) + [90 + i], [True] * 16) for i in range(3)]  # 15 tokens in common
    assert [(g.rows, g.shared) for g in common.prefix_groups(short)] == [([0], 0), ([1], 0), ([2], 0)]
    assert common.shared_length(short) == 48


def test_split_shared_counts_a_prefix_once_and_keeps_the_limit():
    rows = prefixed_rows() * 3
    pieces = common.split_shared(rows, 120)
    assert [r for piece in pieces for r in piece] == rows  # every row once, in order
    assert all(common.shared_length(piece) <= 120 for piece in pieces)
    assert len(pieces) < len(common.split_by_tokens(rows, 120))  # more rows fit once the prefix is shared
    assert common.split_shared(rows, None) == [rows]


def test_grouped_rows_list_their_targets_in_position_order():
    from tunery.models.forward import trained_targets

    rows = prefixed_rows()
    order = common.grouped(rows)
    assert order == [rows[i] for i in (0, 2, 4, 1, 5, 3, 6, 7)]  # each prefix's rows together, first seen first
    plain = [rows[0], rows[2], rows[4], rows[3]]  # prompt_a's rows train after it: one target per position
    positions, index, targets = trained_targets(common.pack_shared(plain))
    assert index is None and len(targets) == int(positions.sum()) == sum(sum(r.trained[1:]) for r in plain)
    # prompt_b's last position predicts both its rows' first answer token; rows 6 and 7 train the
    # same 8 tokens of the prefix they share: those 9 positions predict twice
    positions, index, targets = trained_targets(common.pack_shared(order))
    assert index is not None and len(targets) - int(positions.sum()) == 9
    # out of group order the targets are listed row by row, so the logits are gathered into that order
    positions, index, _ = trained_targets(common.pack_shared([rows[0], rows[3], rows[2]]))
    assert index.tolist() != sorted(index.tolist()) and sorted(index.tolist()) == list(range(int(positions.sum())))
