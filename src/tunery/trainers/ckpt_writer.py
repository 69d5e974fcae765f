"""Checkpoints written on a background thread, so the loop trains on while one goes to disk.

The loop pauses only to copy the checkpoint's tensors (`checkpoint.snapshot`); the files are written,
fsynced and renamed into place (still atomically) by one writer thread, one checkpoint at a time. The
next save, the end of the loop and anything that reads checkpoints wait for the write in progress, and
an error raised while writing (a full disk) is raised again there, in the loop's thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Timing:
    step: int
    pause_s: float  # the loop stopped for this long (copying the tensors)
    write_s: float = 0.0  # writing took this long, in the background


@dataclass
class CheckpointWriter:
    timings: list[Timing] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def submit(self, step: int, pause_s: float, write: Callable[[], object], background: bool = True) -> None:
        """Start `write` on the writer thread, after the previous write has finished; with
        `background=False`, write in this thread now (the loop is stopping: nothing to overlap with, and a
        second Ctrl-C during that write must stop the process at once, the checkpoint left incomplete)."""
        self.wait()
        timing = Timing(step, pause_s)
        self.timings.append(timing)

        def run() -> None:
            start = time.perf_counter()
            try:
                write()
            except BaseException as exc:  # noqa: BLE001 - handed to the loop's thread by wait()
                self._error = exc
            timing.write_s = time.perf_counter() - start

        if not background:
            run()
            self.wait()  # no thread: raises the write's error, if any, here and now
            return
        # Not a daemon: a process that is ending still finishes the checkpoint it started.
        self._thread = threading.Thread(target=run, name="tunery-checkpoint")
        self._thread.start()

    def wait(self) -> None:
        """Block until no write is in progress; raise the error the last write hit, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def summary(self) -> str | None:
        if not self.timings:
            return None
        done = [t for t in self.timings if t.write_s]
        paused = sum(t.pause_s for t in self.timings) / len(self.timings)
        written = sum(t.write_s for t in done) / max(len(done), 1)
        return (f"checkpoints: {len(self.timings)}, the loop paused {paused:.3f} s for each, "
                f"written in {written:.3f} s each in the background")
