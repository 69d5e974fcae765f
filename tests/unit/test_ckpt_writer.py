"""Checkpoints written in the background: the loop does not wait for the disk, every checkpoint is
complete when the loop returns, and a write error reaches the loop's thread."""

from __future__ import annotations

import errno
import json
import threading

import pytest
import torch

from loop_helpers import make_loop, synthetic_rows, tiny_config
from tunery.runfolder import RunFolder
from tunery.trainers import checkpoint as ckpt
from tunery.trainers import loop
from tunery.trainers.ckpt_writer import CheckpointWriter


def test_submit_returns_before_the_write_ends_and_wait_blocks_until_it_has():
    writer, release, written = CheckpointWriter(), threading.Event(), []
    writer.submit(5, 0.01, lambda: (release.wait(5), written.append(5)))
    assert written == []  # the loop goes on while the write waits for the disk
    release.set()
    writer.wait()
    assert written == [5] and writer.timings[0].step == 5 and writer.timings[0].write_s > 0


def test_the_next_submit_waits_for_the_previous_write():
    writer, order = CheckpointWriter(), []
    writer.submit(1, 0.0, lambda: (threading.Event().wait(0.2), order.append(1)))
    writer.submit(2, 0.0, lambda: order.append(2))
    writer.wait()
    assert order == [1, 2]


def test_an_error_while_writing_is_raised_in_the_loops_thread_once():
    writer = CheckpointWriter()

    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device")

    writer.submit(3, 0.0, full_disk)
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    writer.wait()  # raised once, then cleared


def test_a_snapshot_is_not_changed_by_later_updates(tmp_path):
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.ones(3)
    opt.step()
    snap = ckpt.snapshot(1, {"w": param.detach()}, opt, {"step": 1})
    before = param.detach().clone()
    param.grad = torch.ones(3)
    opt.step()  # the loop goes on: weights and moments change in place
    folder = ckpt.write_snapshot(tmp_path, snap)
    weights, extra, state = ckpt.load_checkpoint(folder)
    assert torch.equal(weights["w"], before) and not torch.equal(weights["w"], param.detach())
    assert state["step"] == 1


def test_a_loop_returns_with_every_checkpoint_complete_and_reports_the_timing(smol_tokenizer, tmp_path):
    cfg = tiny_config(max_steps=6, save_every=2, eval_every=100)
    lp = make_loop(smol_tokenizer, cfg, synthetic_rows(12))
    st, reason = loop.train(lp, RunFolder(tmp_path / "run"), loop.LoopState(), lambda: False)
    assert (reason, st.step) == ("finished", 6)
    complete = ckpt.complete_checkpoints(tmp_path / "run" / "checkpoints")
    assert [json.loads((c / ckpt.STATE).read_text())["step"] for c in complete][-1] == 6
    assert [t.step for t in lp.writer.timings] == [2, 4, 6]
    assert all(t.write_s > 0 for t in lp.writer.timings)
    assert lp.writer.summary().startswith("checkpoints: 3, the loop paused ")


def test_a_full_disk_during_a_background_write_fails_the_run_and_keeps_the_previous_checkpoint(
        smol_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERY_FAULT", "enospc:checkpoint:2")
    from tunery import faults
    monkeypatch.setattr(faults, "_hits", {})
    cfg = tiny_config(max_steps=6, save_every=2, eval_every=100)
    lp = make_loop(smol_tokenizer, cfg, synthetic_rows(12))
    with pytest.raises(OSError, match="injected at checkpoint"):
        loop.train(lp, RunFolder(tmp_path / "run"), loop.LoopState(), lambda: False)
    complete = ckpt.complete_checkpoints(tmp_path / "run" / "checkpoints")
    assert [c.name for c in complete] == ["step-0000002"]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000002"]


def test_a_write_when_the_loop_ends_runs_in_the_callers_thread():
    writer, threads = CheckpointWriter(), []
    writer.submit(1, 0.0, lambda: threads.append(threading.current_thread()))
    writer.submit(2, 0.0, lambda: threads.append(threading.current_thread()), background=False)
    assert threads[0] is not threading.current_thread()  # periodic: the writer thread
    assert threads[1] is threading.current_thread()  # stopping: now, so a second Ctrl-C interrupts it
    assert [t.step for t in writer.timings] == [1, 2]
