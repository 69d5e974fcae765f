"""Continuous batching on one base model: sequences of any of its adapters share every forward pass.

A step (`Engine.step`) does three things:

1. drops the rows whose client went away, packing the running rows to the front of the cache;
2. admits waiting sequences into free slots (up to `prefill_tokens` prompt tokens a step) and runs
   their prompts through the model in one right-padded pass, which gives each its first token;
3. runs one decode pass over every running row: its last token at its own position, attending to its
   own slot of the cache; adapters are chosen per row (PEFT's `adapter_names`, "__base__" for none).

Each row's next token is chosen from its logits (grammar mask, greedy or seeded sampling), turned into
text through its `TextStream`, and sent to the request that owns it through `Sequence.emit`; a row
ends on an end token, a stop string, its grammar's end, `max_tokens` or cancellation.

The engine is not thread-safe: the scheduler thread alone calls `step`, and everything else reaches
the model through the scheduler (see scheduler.py).
"""

from __future__ import annotations

import inspect
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from tunery.grammar import apply_grammars
from tunery.serve.sampling import SamplingParams, TokenLogprob, choose_tokens, logprobs_of
from tunery.serve.slots import SlotCache, decode_mask, prefill_mask
from tunery.serve.text import TextStream

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass
class Delta:
    """What one step produced for one sequence: released text, the token ids behind it, their
    log-probabilities when asked for, and the finish reason once it has ended."""

    index: int
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None  # why the sequence ended without an answer
    error_code: str | None = None  # server_shutdown | model_removed | engine_error


@dataclass(eq=False)
class Sequence:
    """One answer being generated: a prompt, its settings and where its pieces go."""

    prompt: list[int]
    params: SamplingParams
    adapter: str
    stop_ids: frozenset[int]
    text: TextStream
    emit: Callable[[Delta], None]
    generator: torch.Generator | None = None
    matcher: object | None = None
    index: int = 0
    out: list[int] = field(default_factory=list)
    cached: int = 0  # positions of this sequence held in its cache slot
    cancelled: bool = False  # set from another thread when the client goes away
    finish_reason: str | None = None
    submitted: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class StepStats:
    prefill_rows: int = 0
    decode_rows: int = 0
    finished: list[Sequence] = field(default_factory=list)


class Engine:
    """One model (a base with PEFT adapters, or a full model) and the sequences decoding on it."""

    def __init__(self, model, max_batch: int, max_context: int, prefill_tokens: int = 512):
        self.model = model
        self.max_batch, self.max_context, self.prefill_tokens = max_batch, max_context, prefill_tokens
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.cache = SlotCache(causal.config.num_hidden_layers, max_batch, max_context)
        self._cache_kw = "cache" if "cache" in inspect.signature(causal.forward).parameters else "past_key_values"
        self.pad_id = causal.config.pad_token_id if causal.config.pad_token_id is not None else 0
        self.running: list[Sequence] = []
        self.waiting: deque[Sequence] = deque()

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def uses_adapters(self) -> bool:
        return hasattr(self.model, "peft_config")

    def knows_adapter(self, name: str) -> bool:
        return name == BASE or name in getattr(self.model, "peft_config", {})

    def adapters_in_use(self) -> set[str]:
        return {s.adapter for s in (*self.running, *self.waiting)}

    @torch.inference_mode()
    def step(self) -> StepStats:
        """Admit, prefill and decode once; returns what was done and the sequences that ended."""
        stats = StepStats()
        self._drop_cancelled(stats)
        admitted = self._admit()
        if admitted:
            stats.prefill_rows = len(admitted)
            self._prefill(admitted)
            self._remove_finished(stats)  # a first token can end a sequence
        if self.running:
            stats.decode_rows = len(self.running)
            self._decode()
            self._remove_finished(stats)
        return stats

    def cancel_all(self, message: str, code: str) -> list[Sequence]:
        """End every running and waiting sequence with an error (shutdown, a failed pass); returns them."""
        ended = [*self.running, *self.waiting]
        for seq in ended:
            seq.finish_reason = "error"
            seq.emit(Delta(seq.index, finish_reason="error", completion_tokens=len(seq.out), error=message,
                           error_code=code))
        self.running.clear()
        self.waiting.clear()
        return ended

    # -- admission and removal -------------------------------------------------------------------

    def _admit(self) -> list[Sequence]:
        admitted, budget = [], self.prefill_tokens
        while self.waiting and len(self.running) < self.max_batch:
            seq = self.waiting[0]
            if seq.cancelled:
                self.waiting.popleft()
                continue
            if admitted and len(seq.prompt) > budget:
                break  # the first one always goes in, however long its prompt
            self.waiting.popleft()
            budget -= len(seq.prompt)
            admitted.append(seq)
            self.running.append(seq)
        return admitted

    def _drop_cancelled(self, stats: StepStats) -> None:
        for seq in self.running:
            if seq.cancelled and seq.finish_reason is None:
                seq.finish_reason = "cancelled"
        self._remove_finished(stats)

    def _remove_finished(self, stats: StepStats) -> None:
        """Free the slots of ended rows, moving the last running row into each hole."""
        row = 0
        while row < len(self.running):
            seq = self.running[row]
            if seq.finish_reason is None:
                row += 1
                continue
            stats.finished.append(seq)
            last = self.running.pop()
            if last is not seq:
                self.cache.move(len(self.running), row, last.cached)
                self.running[row] = last

    # -- forward passes ----------------------------------------------------------------------------

    def _forward(self, ids, mask, positions, adapters: list[str], keep=None) -> torch.Tensor:
        kwargs = {self._cache_kw: self.cache, "use_cache": True}
        if self.uses_adapters:
            kwargs["adapter_names"] = adapters
        if keep is not None:
            kwargs["logits_to_keep"] = keep
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        logits = out.logits
        return (logits if keep is not None else logits[:, -1]).float().contiguous()

    def _prefill(self, admitted: list[Sequence]) -> None:
        first = len(self.running) - len(admitted)
        lengths = [len(s.prompt) for s in admitted]
        width = max(lengths)
        ids = torch.full((len(admitted), width), self.pad_id, dtype=torch.long)
        keep = torch.zeros((len(admitted), width), dtype=torch.bool)
        for row, seq in enumerate(admitted):
            ids[row, : len(seq.prompt)] = torch.tensor(seq.prompt, dtype=torch.long)
            keep[row, len(seq.prompt) - 1] = True
        positions = torch.arange(width).unsqueeze(0).expand(len(admitted), width)
        self.cache.plan_prefill(first, len(admitted), width)
        logits = self._forward(ids, prefill_mask(lengths), positions, [s.adapter for s in admitted], keep)
        for seq in admitted:
            seq.cached = len(seq.prompt)
        self._advance(admitted, logits)

    def _decode(self) -> None:
        rows = self.running
        positions = torch.tensor([s.cached for s in rows], dtype=torch.long)
        length = int(positions.max()) + 1
        self.cache.plan_decode(positions, length)
        ids = torch.tensor([[s.out[-1]] for s in rows], dtype=torch.long)
        logits = self._forward(ids, decode_mask(positions, length), positions.unsqueeze(1),
                               [s.adapter for s in rows])
        for seq in rows:
            seq.cached += 1
        self._advance(rows, logits)

    # -- choosing tokens ----------------------------------------------------------------------------

    def _advance(self, rows: list[Sequence], logits: torch.Tensor) -> None:
        """Choose, record and send each row's next token; mark the rows that ended."""
        wanted = [s.params.logprobs is not None for s in rows]
        raw = logits.clone() if any(wanted) else logits
        apply_grammars(logits, [s.matcher for s in rows])
        tokens = choose_tokens(logits, [s.params for s in rows], [s.generator for s in rows])
        logps = {}
        if any(wanted):
            picked = [i for i, w in enumerate(wanted) if w]
            found = logprobs_of(raw[picked], [tokens[i] for i in picked], [rows[i].params.logprobs for i in picked])
            logps = dict(zip(picked, found))
        now = time.monotonic()
        for i, (seq, token) in enumerate(zip(rows, tokens)):
            if seq.first_token_at is None:
                seq.first_token_at = now
            self._record(seq, token, logps.get(i))

    def _record(self, seq: Sequence, token: int, logprob: TokenLogprob | None) -> None:
        seq.out.append(token)
        delta = Delta(seq.index, tokens=[token])
        if seq.matcher is not None and not seq.matcher.accept_token(token):
            seq.finish_reason = "error"  # cannot happen with the mask applied; never send broken output
            delta.error, delta.error_code = "the grammar rejected a token it had allowed", "engine_error"
        elif token in seq.stop_ids or (seq.matcher is not None and seq.matcher.is_terminated()):
            seq.finish_reason = "stop"
        else:
            if logprob is not None:
                delta.logprobs.append(logprob)
            delta.text = seq.text.push(token)
            if seq.text.stopped:
                seq.finish_reason = "stop"
            elif len(seq.out) >= seq.params.max_tokens or seq.cached >= self.max_context:
                seq.finish_reason = "length"
        if seq.finish_reason is not None:
            delta.text += seq.text.flush()
            delta.finish_reason = seq.finish_reason
            delta.completion_tokens = len(seq.out)
        seq.emit(delta)
