"""A tracker's writes on a background thread: the training loop only puts them in a queue.

Why a thread: an MLflow server can take tens of milliseconds per request (or hang), and a step of a
small model takes less; the loop must never wait for it. A failing write is warned about once (with
the reason) and never raised: tracking is a copy of metrics.jsonl, and losing it must not lose the run.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

CLOSE_TIMEOUT_S = 30.0  # the most a run's end waits for a tracker's pending writes


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
            method, args = self._queue.get()
            if not self.started and method != "close":
                continue
            try:
                getattr(self.sink, method)(*args)
            except Exception as exc:  # a tracker must never stop the run: say why once, carry on
                self.failures += 1
                self.started = self.started and method != "start"
                if self.failures == 1:
                    self.log(f"warning: {self.name} tracking failed ({type(exc).__name__}: {exc}); the run "
                             "goes on, metrics.jsonl holds every figure")
            if method == "close":
                return
