"""The one thread that runs the models: it steps every engine in turn, and between steps takes new
sequences, runs admin tasks (adding or removing a model) and enforces the shutdown deadline.

Request handlers live on the event loop; they hand sequences over with `submit`, which refuses at once
when the queue is full (the handler answers 429) or the server is draining (503). The model is touched
by this thread only, so adding an adapter never races a forward pass.
"""

from __future__ import annotations

import concurrent.futures
import sys
import threading
import time
import traceback
from collections import deque
from typing import Callable

from tunery.serve.engine import Delta, Engine, Sequence


class QueueFull(Exception):
    """The waiting queue holds `max_queue` sequences already."""


class Draining(Exception):
    """The server is shutting down and takes no new work."""


class Scheduler:
    """Steps engines on a background thread; `engines` is called for the current list each round."""

    def __init__(self, engines: Callable[[], list[Engine]], max_queue: int, metrics=None, idle_wait: float = 0.05,
                 housekeeping: Callable[[], None] | None = None):
        self._engines = engines
        self._housekeeping = housekeeping
        self.max_queue = max_queue
        self.metrics = metrics
        self._idle_wait = idle_wait
        self._cond = threading.Condition()
        self._inbox: deque[tuple[Engine, list[Sequence]]] = deque()
        self._tasks: deque[tuple[Callable, concurrent.futures.Future]] = deque()
        self._inbox_count = 0
        self._waiting = 0
        self._stopped = False
        self.deadline: float | None = None  # set when draining
        self.steps = 0
        self._thread = threading.Thread(target=self._run, name="tunery-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def draining(self) -> bool:
        return self.deadline is not None

    @property
    def queued(self) -> int:
        """Sequences waiting for a slot (handed over, not yet decoding)."""
        return self._inbox_count + self._waiting

    def submit(self, engine: Engine, seqs: list[Sequence]) -> None:
        """Queue the sequences of one request, all or none."""
        with self._cond:
            if self.draining:
                raise Draining()
            if self.queued + len(seqs) > self.max_queue:
                raise QueueFull()
            self._inbox.append((engine, seqs))
            self._inbox_count += len(seqs)
            self._cond.notify()

    def call(self, task: Callable) -> concurrent.futures.Future:
        """Run `task()` on the engine thread between two steps; its result or error comes in the future."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            self._tasks.append((task, future))
            self._cond.notify()
        return future

    def begin_drain(self, seconds: float) -> None:
        """Take no new work; sequences still running after `seconds` end with an error."""
        with self._cond:
            if self.deadline is None:
                self.deadline = time.monotonic() + seconds
            self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def idle(self) -> bool:
        return self.queued == 0 and not any(e.running for e in self._engines())

    # -- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    break
                if not (self._inbox or self._tasks or any(e.has_work for e in self._engines())):
                    self._cond.wait(self._idle_wait)
                inbox, self._inbox = list(self._inbox), deque()
                tasks, self._tasks = list(self._tasks), deque()
                for engine, seqs in inbox:
                    self._accept(engine, seqs)
                self._inbox_count = 0
                self._waiting = sum(len(e.waiting) for e in self._engines())
            for task, future in tasks:
                self._run_task(task, future)
            if self._housekeeping:  # after the inbox: an adapter in a queued request counts as in use
                self._housekeeping()
            self._enforce_deadline()
            for engine in self._engines():
                if engine.has_work:
                    self._step(engine)
            self._waiting = sum(len(e.waiting) for e in self._engines())
            self._publish()
        for engine in self._engines():
            engine.cancel_all("the server stopped before this request finished", "server_shutdown")

    def _accept(self, engine: Engine, seqs: list[Sequence]) -> None:
        """Queue sequences on their engine, unless their model was removed after they were checked."""
        if engine in self._engines() and all(engine.knows_adapter(s.adapter) for s in seqs):
            engine.waiting.extend(seqs)
            return
        for seq in seqs:
            seq.finish_reason = "error"
            seq.emit(Delta(seq.index, finish_reason="error", error="the model was removed from this server",
                           error_code="model_removed"))

    @staticmethod
    def _run_task(task: Callable, future: concurrent.futures.Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(task())
        except BaseException as exc:  # handed to the caller, who turns it into an answer
            future.set_exception(exc)

    def _step(self, engine: Engine) -> None:
        start = time.monotonic()
        try:
            stats = engine.step()
        except Exception:  # a failed pass must not take the server down: the rows it held end with an error
            print("tunery serve: a forward pass failed:\n" + traceback.format_exc(), file=sys.stderr, flush=True)
            engine.cancel_all("the model failed on this batch (the server log has the details)", "engine_error")
            return
        self.steps += 1
        if self.metrics:
            self.metrics.step(stats, time.monotonic() - start)

    def _enforce_deadline(self) -> None:
        if self.deadline is None or time.monotonic() < self.deadline:
            return
        for engine in self._engines():
            if engine.has_work:
                ended = engine.cancel_all("the server is shutting down and this request did not finish in time",
                                          "server_shutdown")
                if self.metrics:
                    self.metrics.ended.labels(reason="error").inc(len(ended))

    def _publish(self) -> None:
        if self.metrics:
            self.metrics.load(self.queued, sum(len(e.running) for e in self._engines()))
