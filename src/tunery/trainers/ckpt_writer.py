"""Checkpoints written on a background thread, so the loop trains on while one goes to disk.

A checkpoint is written in two halves (`checkpoint.stage_snapshot` / `commit_staged`):

1. staging, on the writer thread: every file written and fsynced in a temporary folder;
2. committing, always in the loop's thread: the completeness marker written and the folder renamed
   into place, then old checkpoints rotated.

The loop commits a finished write at its next step (`poll`), before the next checkpoint (`submit`)
and at its end (`wait`). Because only the loop's thread can make a checkpoint complete, a second
Ctrl-C, which interrupts that thread, always leaves a checkpoint in progress incomplete. The loop then
calls `abandon`: staging stops before its next file and removes its temporary folder, so the process
exits after at most one file's write (the thread is not a daemon: a daemon thread still writing at
interpreter shutdown can abort the process). An error raised while staging (a full disk) is raised
again in the loop's thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Timing:
    step: int
    pause_s: float  # the loop stopped for this long (copying the tensors)
    write_s: float = 0.0  # staging took this long (in the background when submitted so)
    commit_s: float = 0.0  # the marker, the rename and the rotation, in the loop's thread


@dataclass
class _Pending:
    timing: Timing
    commit: Callable[[Any], object]
    abandoned: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    staged: Any = None
    error: BaseException | None = None


@dataclass
class CheckpointWriter:
    timings: list[Timing] = field(default_factory=list)
    _pending: _Pending | None = None

    def submit(self, step: int, pause_s: float, stage: Callable[[Callable[[], bool]], Any],
               commit: Callable[[Any], object], background: bool = True) -> None:
        """Commit the previous checkpoint (waiting for its staging), then stage this one on the writer
        thread; with `background=False` stage and commit it here and now (the loop is ending: nothing is
        left to overlap with). `stage(abandoned)` should stop early once `abandoned()` is true."""
        self.wait()
        pending = _Pending(Timing(step, pause_s), commit)
        self.timings.append(pending.timing)

        def run() -> None:
            start = time.perf_counter()
            try:
                pending.staged = stage(pending.abandoned.is_set)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop's thread by wait()
                pending.error = exc
            pending.timing.write_s = time.perf_counter() - start

        self._pending = pending
        if not background:
            run()
            self.wait()  # commits, or raises the staging error, here and now
            return
        pending.thread = threading.Thread(target=run, name="tunery-checkpoint")
        pending.thread.start()

    def poll(self) -> None:
        """Commit the pending checkpoint if its staging has finished; never blocks on the disk."""
        pending = self._pending
        if pending is not None and (pending.thread is None or not pending.thread.is_alive()):
            self.wait()

    def wait(self) -> None:
        """Wait for the pending checkpoint's staging and commit it here; raise the error staging hit, if
        any (once)."""
        pending = self._pending
        if pending is None:
            return
        if pending.thread is not None:
            pending.thread.join()  # a second Ctrl-C can land here: still pending, so `abandon` reaches it
        self._pending = None
        if pending.error is not None:
            raise pending.error
        start = time.perf_counter()
        pending.commit(pending.staged)
        pending.timing.commit_s = time.perf_counter() - start

    def abandon(self) -> None:
        """Never commit the pending checkpoint, and tell its staging to stop (a second Ctrl-C: the process
        is going, and what it was writing must stay incomplete). Does not wait."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.abandoned.set()

    def summary(self) -> str | None:
        if not self.timings:
            return None
        done = [t for t in self.timings if t.write_s]
        paused = sum(t.pause_s + t.commit_s for t in self.timings) / len(self.timings)
        written = sum(t.write_s for t in done) / max(len(done), 1)
        return (f"checkpoints: {len(self.timings)}, the loop paused {paused:.3f} s for each, "
                f"written in {written:.3f} s each in the background")
