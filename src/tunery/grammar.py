"""Structured output: `response_format` json_object / json_schema enforced token by token with xgrammar.

xgrammar (the grammar engine vLLM and SGLang use) compiles a JSON schema against the model's vocabulary
once, then, at every step, says which tokens keep the text inside the grammar; the others get -inf
before the token is chosen. The answer is therefore valid JSON for the schema whenever it ends by
itself (finish_reason "stop"); only `max_tokens` can cut it short (finish_reason "length").

Whitespace between JSON tokens is allowed, as a model trained on `json.dumps` output writes it, but at
most `MAX_WHITESPACE` characters in a row, so a weak model cannot fill its budget with blanks.

One guard of our own: xgrammar 0.2.9 lets a string with `minLength` / `maxLength` hold raw control
characters (tab, newline, U+0000-U+001F), which JSON forbids unescaped and `json.loads` rejects
(tests/unit/test_serve_grammar.py shows it). `StringGuard` follows each row's text through JSON's
string syntax and masks, inside a string, every token that holds a control byte.
"""

from __future__ import annotations

import json
import threading

import torch

from tunery._deps import require

MAX_WHITESPACE = 16


class GrammarError(ValueError):
    """A response_format that cannot be compiled (an invalid or unsupported JSON schema)."""


class GrammarBook:
    """Compiled grammars for one tokenizer (compiled once per schema, shared by every request)."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int]):
        xgr = require("xgrammar", extra="serve")
        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids)
        self.vocab_size = vocab_size
        self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        self._lock = threading.Lock()  # compile from request threads; one compiler at a time
        self._vocab = info.decoded_vocab  # each token's bytes
        self._banned = _control_bans(self._vocab)

    def compile(self, response_format: dict, compact: bool = False):
        """The compiled grammar of a normalised response_format ({"type": ..., "schema": ...}). `compact`:
        no free whitespace, only json.dumps' own separators (", " and ": "), so an answer's length is
        bounded by its content (tunery's constrained answers, `tunery.constrain`)."""
        kind = response_format["type"]
        spacing = {"any_whitespace": False} if compact else {"max_whitespace_cnt": MAX_WHITESPACE}
        with self._lock:
            try:
                if kind == "json_object":
                    return self._compiler.compile_json_schema('{"type": "object"}', strict_mode=False, **spacing)
                schema = json.dumps(response_format["schema"])
                return self._compiler.compile_json_schema(schema, **spacing)
            except (RuntimeError, ValueError, TypeError) as exc:
                raise GrammarError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc

    def matcher(self, compiled) -> "RowGrammar":
        """A fresh matcher (one per sequence) that follows the tokens a sequence has chosen."""
        return RowGrammar(self._xgr.GrammarMatcher(compiled), StringGuard(self._vocab, self._banned))


OUTSIDE, INSIDE, ESCAPED = 0, 1, 2  # where a JSON text is: between values, in a string, after a backslash


def _lex(state: int, data: bytes) -> tuple[int, bool]:
    """(the state after `data`, whether a control byte fell inside a string)."""
    bad = False
    for byte in data:
        if state == OUTSIDE:
            state = INSIDE if byte == 0x22 else OUTSIDE
        elif byte < 0x20:
            bad = True
        elif state == ESCAPED:
            state = INSIDE
        elif byte == 0x5C:
            state = ESCAPED
        elif byte == 0x22:
            state = OUTSIDE
    return state, bad


def _control_bans(vocab: list[bytes]) -> list[torch.Tensor]:
    """Per starting state, the tokens that would put a control byte inside a string."""
    candidates = [i for i, data in enumerate(vocab) if any(b < 0x20 for b in data)]
    return [torch.tensor([i for i in candidates if _lex(start, vocab[i])[1]], dtype=torch.long)
            for start in (OUTSIDE, INSIDE, ESCAPED)]


class StringGuard:
    """Follows one row's text through JSON string syntax; `banned()` are the tokens it must not take."""

    def __init__(self, vocab: list[bytes], bans: list[torch.Tensor]):
        self.vocab, self.bans, self.state = vocab, bans, OUTSIDE

    def banned(self) -> torch.Tensor:
        return self.bans[self.state]

    def advance(self, token: int) -> None:
        if token < len(self.vocab):
            self.state = _lex(self.state, self.vocab[token])[0]


class RowGrammar:
    """One sequence's grammar: xgrammar's matcher plus the string guard."""

    def __init__(self, matcher, guard: StringGuard):
        self.matcher, self.guard = matcher, guard

    def accept_token(self, token: int) -> bool:
        self.guard.advance(token)
        return self.matcher.accept_token(token)

    def is_terminated(self) -> bool:
        return self.matcher.is_terminated()


def apply_grammars(logits: torch.Tensor, grammars: list[RowGrammar | None]) -> None:
    """Set to -inf, in place, every token that would leave its row's grammar (rows without one: None)."""
    rows = [i for i, g in enumerate(grammars) if g is not None]
    if not rows:
        return
    xgr = require("xgrammar", extra="serve")
    bitmask = xgr.allocate_token_bitmask(logits.shape[0], logits.shape[-1])
    for row in rows:
        grammars[row].matcher.fill_next_token_bitmask(bitmask, row)
    xgr.apply_token_bitmask_inplace(logits, bitmask, indices=rows)
    for row in rows:
        logits[row, grammars[row].guard.banned()] = float("-inf")
