"""Structured output: `response_format` json_object / json_schema enforced token by token with xgrammar.

xgrammar (the grammar engine vLLM and SGLang use) compiles a JSON schema against the model's vocabulary
once, then, at every step, says which tokens keep the text inside the grammar; the others get -inf
before the token is chosen. The answer is therefore valid JSON for the schema whenever it ends by
itself (finish_reason "stop"); only `max_tokens` can cut it short (finish_reason "length").

Whitespace between JSON tokens is allowed, as a model trained on `json.dumps` output writes it, but at
most `MAX_WHITESPACE` characters in a row, so a weak model cannot fill its budget with blanks.
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

    def compile(self, response_format: dict):
        """The compiled grammar of a normalised response_format ({"type": ..., "schema": ...})."""
        kind = response_format["type"]
        with self._lock:
            try:
                if kind == "json_object":
                    return self._compiler.compile_json_schema(
                        '{"type": "object"}', max_whitespace_cnt=MAX_WHITESPACE, strict_mode=False)
                schema = json.dumps(response_format["schema"])
                return self._compiler.compile_json_schema(schema, max_whitespace_cnt=MAX_WHITESPACE)
            except (RuntimeError, ValueError, TypeError) as exc:
                raise GrammarError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc

    def matcher(self, compiled):
        """A fresh matcher (one per sequence) that follows the tokens a sequence has chosen."""
        return self._xgr.GrammarMatcher(compiled)


def apply_grammars(logits: torch.Tensor, matchers: list) -> None:
    """Set to -inf, in place, every token that would leave its row's grammar (rows without one: None)."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return
    xgr = require("xgrammar", extra="serve")
    bitmask = xgr.allocate_token_bitmask(logits.shape[0], logits.shape[-1])
    for row in rows:
        matchers[row].fill_next_token_bitmask(bitmask, row)
    xgr.apply_token_bitmask_inplace(logits, bitmask, indices=rows)
