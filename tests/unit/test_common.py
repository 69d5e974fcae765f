"""Shared loop pieces: schedule values, batch plan, checkpoint rotation and atomicity."""

from __future__ import annotations

import math

import pytest
import torch

from loop_helpers import synthetic_rows
from tunery.errors import TuneryError
from tunery.trainers import checkpoint as ckpt
from tunery.data import batching
from tunery.trainers import common


def test_lr_schedule_warmup_then_cosine_and_linear():
    assert common.lr_factor(0, 100, 4, "cosine") == pytest.approx(1 / 5)
    assert common.lr_factor(3, 100, 4, "cosine") == pytest.approx(4 / 5)
    assert common.lr_factor(4, 100, 4, "cosine") == pytest.approx(1.0)
    assert common.lr_factor(52, 100, 4, "cosine") == pytest.approx(0.5)
    assert common.lr_factor(52, 100, 4, "linear") == pytest.approx(0.5)
    assert common.lr_factor(99, 100, 0, "constant") == 1.0
    assert common.lr_factor(100, 100, 0, "cosine") == pytest.approx(0.0)


def test_plan_covers_every_example_once_per_epoch():
    plan = batching.make_plan(10, batch_size=3, grad_accum=2, epochs=2, max_steps=None, seed=1)
    assert (plan.micro_per_epoch, plan.steps_per_epoch, plan.total_steps) == (4, 2, 4)
    epoch0 = [i for s in range(2) for mb in batching.micro_batches_for_step(plan, s) for i in mb]
    epoch1 = [i for s in range(2, 4) for mb in batching.micro_batches_for_step(plan, s) for i in mb]
    assert sorted(epoch0) == sorted(epoch1) == list(range(10))
    assert epoch0 != epoch1  # reshuffled each epoch
    assert batching.micro_batches_for_step(plan, 3) == batching.micro_batches_for_step(plan, 3)
    assert batching.make_plan(10, 3, 2, epochs=3, max_steps=5, seed=1).total_steps == 5


def test_collate_masks_untrained_and_padding():
    rows = synthetic_rows(2)
    batch = batching.collate(rows, pad_id=2)
    width = max(len(r.ids) for r in rows)
    assert batch["input_ids"].shape == (2, width)
    for i, row in enumerate(rows):
        n = len(row.ids)
        assert batch["attention_mask"][i].sum() == n
        expected = [t if m else batching.IGNORE for t, m in zip(row.ids, row.trained)]
        assert batch["labels"][i, :n].tolist() == expected
        assert (batch["labels"][i, n:] == batching.IGNORE).all()
    assert batching.count_trained(batch) == sum(sum(r.trained[1:]) for r in rows)


def test_assert_finite_state_refuses_nan():
    with pytest.raises(TuneryError, match="1 tensors hold NaN or inf"):
        common.assert_finite_state({"a": torch.tensor([1.0, math.nan])}, "x")


def _save(root, step):
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([param])
    param.grad = torch.ones(3)
    opt.step()
    return ckpt.save_checkpoint(root, step, {"w": param.detach()}, opt, {"step": step})


def test_rotation_keeps_newest_and_best_and_ignores_incomplete(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step)
    (tmp_path / "step-0000005").mkdir()  # killed before its marker was written
    assert ckpt.latest_checkpoint(tmp_path).name == "step-0000004"
    removed = ckpt.rotate(tmp_path, keep=2, protect={1})
    assert sorted(p.name for p in removed) == ["step-0000002"]
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step-0000001", "step-0000003", "step-0000004"]
    assert not (tmp_path / "step-0000005").exists()


def test_checkpoint_round_trip_restores_optimizer_and_rng(tmp_path):
    folder = _save(tmp_path, 7)
    expected = torch.rand(4)  # the draw right after the snapshot
    param = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([param])
    weights, extra, state = ckpt.load_checkpoint(folder)
    ckpt.restore_training_state(folder, opt, extra, state)
    # one AdamW step from 1 with gradient 1: decay lr*wd, then a step of lr (m_hat / sqrt(v_hat) = 1)
    torch.testing.assert_close(weights["w"], torch.full((3,), 1 - 1e-3 * 0.01 - 1e-3))
    assert int(opt.state_dict()["state"][0]["step"]) == 1
    assert torch.equal(torch.rand(4), expected)
    assert state["loop"] == {"step": 7}
