"""A tracker's writes on a background thread: the training loop only puts them in a queue.

Why a thread: an MLflow store or server can take tens of milliseconds per request (or hang), and a step
of a small model takes less; the loop must never wait for it. Metrics lines that queued up while the
thread was busy are written in one request (`metrics_batch`), so a slow store never falls further
behind. A failing write is warned about once (with the reason) and never raised: tracking is a copy of
metrics.jsonl, and losing it must not lose the run.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

CLOSE_TIMEOUT_S = 60.0  # the most a run's end waits for a tracker's pending writes


class Background:
    """Calls `sink.<method>(*args)` in order on one daemon thread."""

    def __init__(self, name: str, sink, log: Callable[[str], None]):
        self.name, self.sink, self.log = name, sink, log
        self.failures = 0
        self.started = True  # False once `start` failed: later writes would fail the same way, skip them
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=f"tunery-{name}", daemon=True)
        self._thread.start()

    def submit(self, method: str, *args) -> None:
        self._queue.put((method, args))

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Write what is pending, then close the sink; wait at most `timeout` seconds."""
        self._queue.put(("close", ()))
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.log(f"warning: {self.name}: pending tracking writes did not finish in {timeout:.0f} s; "
                     "metrics.jsonl holds every figure")
        elif self.failures:
            self.log(f"warning: {self.name}: {self.failures} tracking writes failed in this run; "
                     "metrics.jsonl holds every figure")

    def _work(self) -> None:
        while True:
            items = [self._queue.get()]
            while items[-1][0] == "metrics":  # take every metrics line already waiting, and what follows
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [args[0] for method, args in items if method == "metrics"]
            if records:
                self._call("metrics_batch", (records,), len(records))
            for method, args in items:
                if method != "metrics":
                    self._call(method, args, 1)
                if method == "close":
                    return

    def _call(self, method: str, args: tuple, writes: int) -> None:
        if not self.started and method != "close":
            self.failures += writes
            return
        try:
            getattr(self.sink, method)(*args)
        except Exception as exc:  # a tracker must never stop the run: say why once, carry on
            self.failures += writes
            self.started = self.started and method != "start"
            if self.failures == writes:
                self.log(f"warning: {self.name} tracking failed ({type(exc).__name__}: {exc}); the run "
                         "goes on, metrics.jsonl holds every figure")
