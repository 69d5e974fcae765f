"""The output head's loss made a slice of positions at a time (losses/head_ce.py): the same loss and
the same gradients as the plain path, for the hidden states and for a head that trains, and training
takes it only above the size where the plain path's logits get large."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_model
from tunery.losses.head_ce import head_ce_sum
from tunery.models import forward


def _plain(hidden, weight, targets):
    return F.cross_entropy((hidden @ weight.T).float(), targets, reduction="sum")


@pytest.mark.parametrize("rows", [1, 3, 7, 50])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_sliced_loss_and_gradients_equal_the_plain_path(rows, dtype, tol):
    g = torch.Generator().manual_seed(rows)
    hidden = torch.randn(7, 16, generator=g).to(dtype).requires_grad_()
    weight = torch.randn(40, 16, generator=g).to(dtype).requires_grad_()
    targets = torch.randint(0, 40, (7,), generator=g)
    expected = _plain(hidden, weight, targets)
    (expected * 0.5).backward()  # a scaled loss, as gradient accumulation divides it
    want_h, want_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    got, n = head_ce_sum(hidden, weight, targets, rows)
    (got * 0.5).backward()
    assert n == 7 and got.dtype == torch.float32
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=tol)
    torch.testing.assert_close(hidden.grad.float(), want_h.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(weight.grad.float(), want_w.float(), rtol=tol, atol=tol)


def test_a_frozen_head_gets_no_gradient_and_without_gradients_only_the_loss_is_made():
    hidden = torch.randn(5, 8, requires_grad=True)
    weight = torch.randn(30, 8)  # frozen, as under LoRA
    targets = torch.tensor([0, 29, 3, 3, 17])
    loss, _ = head_ce_sum(hidden, weight, targets, 2)
    loss.backward()
    assert weight.grad is None and hidden.grad is not None
    with torch.no_grad():
        loss_only, n = head_ce_sum(hidden, weight, targets, 2)
    assert (n, loss_only.requires_grad) == (5, False)
    assert float(loss_only) == pytest.approx(float(_plain(hidden, weight, targets)), rel=1e-6)
    empty, count = head_ce_sum(hidden[:0], weight, targets[:0], 2)
    assert (float(empty), count) == (0.0, 0)


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    total, count = forward.forward_loss(model, batch)
    total.backward()
    return float(total.detach()), count, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_training_slices_the_head_above_the_threshold_with_the_same_loss_and_gradients(smol_tokenizer, monkeypatch):
    model = make_tiny_model(len(smol_tokenizer))
    ids = torch.randint(0, len(smol_tokenizer), (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :4] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    plain = _loss_and_grads(model, batch)
    calls = []
    monkeypatch.setattr(forward, "head_ce_sum", lambda *a: calls.append(a[3]) or head_ce_sum(*a))
    assert _loss_and_grads(model, batch)[0] == plain[0] and calls == []  # below the threshold: the plain path
    monkeypatch.setattr(forward, "HEAD_SLICE_ELEMENTS", 5 * len(smol_tokenizer))
    sliced = _loss_and_grads(model, batch)
    assert calls == [5]  # 16 trained positions, 5 a slice
    assert sliced[0] == pytest.approx(plain[0], rel=1e-5) and sliced[1] == plain[1] == 16
    head = model.get_output_embeddings().weight
    assert head is model.get_input_embeddings().weight  # tied: the head's gradient lands in the embedding's
    assert sliced[2].keys() == plain[2].keys() and "model.embed_tokens.weight" in plain[2]
    for name, grad in plain[2].items():
        torch.testing.assert_close(sliced[2][name], grad, rtol=1e-3, atol=2e-5)  # float sums in another order
