"""One request's sequences as the handler sees them: pieces arrive from the engine thread on an asyncio
queue, are collected per choice, and mark the request's first token and end."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from tunery.serve.engine import Delta, Sequence
from tunery.serve.sampling import TokenLogprob

POLL_SECONDS = 0.5  # how often a non-streaming request checks that its client is still there


class Disconnected(Exception):
    """The client went away before its answer was ready."""


@dataclass
class Choice:
    index: int
    pieces: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None
    error_code: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class Job:
    """The sequences of one request, and what they have produced so far."""

    def __init__(self, prefix: str, model: str, count: int, prompt_tokens: int):
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.model = model
        self.created = int(time.time())
        self.started = time.monotonic()
        self.first_token: float | None = None
        self.finished: float | None = None
        self.prompt_tokens = prompt_tokens
        self.choices = [Choice(i) for i in range(count)]
        self.sequences: list[Sequence] = []
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Delta] = asyncio.Queue()
        self._open = count

    def sink(self, delta: Delta) -> None:
        """Called on the engine thread: hand the piece over to the event loop."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, delta)
        except RuntimeError:  # the event loop has closed (the server stopped): nobody is listening
            pass

    @property
    def done(self) -> bool:
        return self._open == 0

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)

    @property
    def error(self) -> str | None:
        return next((c.error for c in self.choices if c.error), None)

    @property
    def error_code(self) -> str | None:
        return next((c.error_code for c in self.choices if c.error), None)

    def cancel(self) -> None:
        for seq in self.sequences:
            seq.cancel()

    async def next(self) -> Delta:
        """The next piece of any choice, recorded into its choice."""
        delta = await self._queue.get()
        self._record(delta)
        return delta

    def _record(self, delta: Delta) -> None:
        choice = self.choices[delta.index]
        if delta.text or delta.tokens:
            if self.first_token is None:
                self.first_token = time.monotonic()
        choice.pieces.append(delta.text)
        choice.tokens += delta.tokens
        choice.logprobs += delta.logprobs
        if delta.finish_reason is not None:
            choice.finish_reason = delta.finish_reason
            choice.completion_tokens = delta.completion_tokens
            choice.error, choice.error_code = delta.error, delta.error_code
            self._open -= 1
            if self._open == 0:
                self.finished = time.monotonic()

    async def wait(self, is_disconnected) -> None:
        """Collect every piece until all choices end; cancel and raise Disconnected if the client leaves."""
        getter = None
        try:
            while not self.done:
                getter = getter or asyncio.ensure_future(self._queue.get())
                ready, _ = await asyncio.wait({getter}, timeout=POLL_SECONDS)
                if ready:
                    self._record(getter.result())
                    getter = None
                elif await is_disconnected():
                    self.cancel()
                    raise Disconnected()
        finally:
            if getter is not None:
                getter.cancel()
