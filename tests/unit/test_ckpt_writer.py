"""Checkpoints written in the background: the loop does not wait for the disk, only the loop's thread
marks a checkpoint complete (so a second Ctrl-C leaves one in progress incomplete), every checkpoint is
complete when the loop returns, and a write error reaches the loop's thread."""

from __future__ import annotations

import errno
import json
import signal
import threading
import time

import pytest
import torch

from loop_helpers import make_loop, synthetic_rows, tiny_config
from tunery.runfolder import RunFolder
from tunery.trainers import checkpoint as ckpt
from tunery.trainers import loop
from tunery.trainers.ckpt_writer import CheckpointWriter


def record(log: list, name: str, release: threading.Event | None = None):
    """A stage or commit callable that logs (name, thread) and, for a stage, waits for `release`."""
    def call(*_):
        if release is not None:
            release.wait(5)
        log.append((name, threading.current_thread()))
        return name
    return call


def test_staging_runs_in_the_background_and_only_the_loops_thread_commits():
    writer, release, log = CheckpointWriter(), threading.Event(), []
    writer.submit(5, 0.01, record(log, "stage", release), record(log, "commit"))
    writer.poll()
    assert log == []  # staging still waits for the disk: poll neither blocks nor commits
    release.set()
    writer.wait()
    me = threading.current_thread()
    assert [name for name, _ in log] == ["stage", "commit"]
    assert log[0][1] is not me and log[1][1] is me
    assert writer.timings[0].step == 5 and writer.timings[0].write_s > 0


def test_poll_commits_a_finished_staging_without_waiting():
    writer, log = CheckpointWriter(), []
    writer.submit(1, 0.0, record(log, "stage"), lambda staged: log.append(("commit", staged)))
    deadline = time.monotonic() + 5
    while ("commit", "stage") not in log and time.monotonic() < deadline:
        writer.poll()
        time.sleep(0.01)
    assert log[-1] == ("commit", "stage")  # the commit receives what staging returned


def test_the_next_submit_commits_the_previous_checkpoint_first():
    writer, log = CheckpointWriter(), []
    writer.submit(1, 0.0, lambda _: (threading.Event().wait(0.2), log.append("stage 1")),
                  lambda _: log.append("commit 1"))
    writer.submit(2, 0.0, lambda _: log.append("stage 2"), lambda _: log.append("commit 2"))
    writer.wait()
    assert log == ["stage 1", "commit 1", "stage 2", "commit 2"]


def test_an_error_while_writing_is_raised_in_the_loops_thread_once_and_nothing_is_committed():
    writer, committed = CheckpointWriter(), []

    def full_disk(_abandoned):
        raise OSError(errno.ENOSPC, "No space left on device")

    writer.submit(3, 0.0, full_disk, committed.append)
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    writer.wait()  # raised once, then cleared
    assert committed == []


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


def test_a_ctrl_c_while_waiting_for_a_staging_still_lets_abandon_stop_it():
    """The likeliest moment for a second Ctrl-C: the loop waits for a periodic staging before writing the
    interrupt's own checkpoint. That staging must still be reachable by `abandon`."""
    writer, release, seen, committed = CheckpointWriter(), threading.Event(), [], []

    def stage(abandoned):
        release.wait(10)
        seen.append(abandoned())

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        writer.submit(4, 0.0, stage, committed.append)
        signal.setitimer(signal.ITIMER_REAL, 0.2)  # arrives while wait() joins the staging thread
        with pytest.raises(KeyboardInterrupt):
            writer.wait()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    writer.abandon()
    release.set()
    deadline = time.monotonic() + 10  # not join(): an interrupted join can leave the thread looking stopped
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [True] and committed == []  # told to stop, and never committed
    writer.wait()  # nothing left pending


def test_a_write_when_the_loop_ends_runs_in_the_callers_thread():
    writer, log = CheckpointWriter(), []
    writer.submit(1, 0.0, record(log, "stage 1"), record(log, "commit 1"))
    writer.submit(2, 0.0, record(log, "stage 2"), record(log, "commit 2"), background=False)
    me = threading.current_thread()
    assert [name for name, _ in log] == ["stage 1", "commit 1", "stage 2", "commit 2"]
    assert log[0][1] is not me  # periodic: the writer thread
    assert all(thread is me for _, thread in log[1:])  # stopping: now, so a second Ctrl-C interrupts it
    assert [t.step for t in writer.timings] == [1, 2]


def test_a_second_ctrl_c_while_a_checkpoint_is_staged_leaves_it_incomplete(smol_tokenizer, tmp_path, monkeypatch):
    """The race a background write once lost: the second signal reaches the loop's thread while the
    writer thread is still writing files; that checkpoint must never be marked complete, and its
    staging stops and removes its temporary folder."""
    release, outcome = threading.Event(), []
    real_stage = ckpt.stage_snapshot

    def slow_stage(root, snap, abandoned):
        release.wait(10)
        try:
            outcome.append(real_stage(root, snap, abandoned))
        except ckpt.Abandoned as exc:
            outcome.append(exc)
            raise

    monkeypatch.setattr(ckpt, "stage_snapshot", slow_stage)
    cfg = tiny_config(max_steps=8, save_every=2, eval_every=100)
    lp = make_loop(smol_tokenizer, cfg, synthetic_rows(16))
    calls = []

    def second_ctrl_c():  # read after every step: at step 3 the step-2 checkpoint is still being staged
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        loop.train(lp, RunFolder(tmp_path / "run"), loop.LoopState(), second_ctrl_c)
    release.set()  # the abandoned staging goes on after the loop has gone...
    deadline = time.monotonic() + 10
    while not outcome and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outcome and isinstance(outcome[0], ckpt.Abandoned)  # ...and stops at its next file
    assert str(outcome[0]) == "checkpoint step 2 abandoned"
    for thread in threading.enumerate():
        if thread.name == "tunery-checkpoint":
            thread.join(10)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert ckpt.complete_checkpoints(checkpoints) == []  # never marked complete
    assert list(checkpoints.iterdir()) == []  # and its temporary folder is gone
    assert [t.step for t in lp.writer.timings] == [2] and lp.writer.timings[0].commit_s == 0.0
