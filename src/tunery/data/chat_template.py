"""Render a chat template to text, fast, and exactly as ``tokenizer.apply_chat_template`` does.

Rendering is the larger half of preparing a conversation (two renderings per answer, see render.py),
and ``apply_chat_template`` spends more time normalising its inputs than Jinja spends rendering: for a
short conversation about 23 µs a call against 10 µs for the compiled template alone (2 CPU cores).
`TemplateRenderer` compiles the template once in the same kind of sandboxed Jinja environment
(trimmed blocks, loop controls, ``raise_exception``, ``strftime_now``, an unescaped ``tojson``) and
renders messages that are already plain ``{"role", "content"}`` dicts of strings.

It is only a shortcut: on creation it renders a few probe conversations both ways and uses the fast
path only when every result is identical, and whenever the fast path raises, the conversation is
rendered again by ``apply_chat_template``, so that errors (and any case the probes missed that makes
Jinja fail) come from the reference implementation.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from tunery.errors import TuneryError

_PROBES = (
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], False),
    ([{"role": "user", "content": "Hi"}], True),
    (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Q1 <b>&</b>"},
            {"role": "assistant", "content": ' A1 "x" '},
            {"role": "user", "content": "Q2\n"},
            {"role": "assistant", "content": "A2"},
        ],
        False,
    ),
    ([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], True),
)


@lru_cache(maxsize=32)
def _compile(template: str):
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """``{% generation %}...{% endgeneration %}`` marks assistant text for transformers' own
        masks; tunery finds answers by rendering prefixes, so the block just renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


_AGREES: dict[tuple, bool] = {}  # (template, variables) -> fast path agreed with the reference


class TemplateRenderer:
    """``render(messages, add_generation_prompt)`` with one template of one tokenizer."""

    def __init__(self, tokenizer, template: str):
        self.tokenizer, self.template = tokenizer, template
        self._variables = dict(getattr(tokenizer, "special_tokens_map", {}) or {})
        try:
            self._compiled = _compile(template)
        except Exception:  # a template Jinja cannot compile here: the reference path reports it
            self._compiled = None
        # The verdict depends only on the template and the variables it sees: probed once per pair,
        # since `render_example` builds a renderer for each example it is given.
        key = (template, tuple(sorted((k, str(v)) for k, v in self._variables.items())))
        if self._compiled is not None and key not in _AGREES:
            if len(_AGREES) >= 64:  # a long-lived process that saw many templates: start again
                _AGREES.clear()
            _AGREES[key] = self._agrees_on_probes()
        if self._compiled is not None and not _AGREES[key]:
            self._compiled = None

    @property
    def fast(self) -> bool:
        """True when the compiled template is used (it agreed with the reference on every probe)."""
        return self._compiled is not None

    def _agrees_on_probes(self) -> bool:
        compared = 0
        for messages, prompt in _PROBES:
            fast, reference = self._try(self._fast, messages, prompt), self._try(self.reference, messages, prompt)
            if isinstance(fast, Exception) and isinstance(reference, Exception):
                continue  # the template refuses this conversation both ways
            if fast != reference:
                return False
            compared += 1
        return compared > 0

    @staticmethod
    def _try(render, messages, prompt):
        try:
            return render(messages, prompt)
        except Exception as exc:  # compared above, never swallowed: each path's own error
            return exc

    def _fast(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self._compiled.render(
            messages=messages, tools=None, documents=None,
            add_generation_prompt=add_generation_prompt, **self._variables,
        )

    def reference(self, messages: list[dict], add_generation_prompt: bool) -> str:
        """The rendering of ``tokenizer.apply_chat_template`` (what the model will be served with)."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=self.template
        )

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        """The template's text for ``messages``; errors are the reference path's own."""
        if self._compiled is not None:
            try:
                return self._fast(messages, add_generation_prompt)
            except Exception:  # rendered again below, so the error (if any) is the reference's
                pass
        return self.reference(messages, add_generation_prompt)


def prompt_ids(tokenizer, conversation: list[dict]) -> list[int]:
    """Token ids of a conversation rendered by the chat template, ending with the assistant header."""
    if not tokenizer.chat_template:
        raise TuneryError(
            "the tokenizer has no chat template, so conversations cannot be rendered",
            fix="use an instruct/chat model, or a run folder whose tokenizer/ carries a template",
        )
    encoded = tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(encoded["input_ids"])


def cut_at_stop(ids: list[int], stop_ids: list[int]) -> list[int]:
    """The generated ids before the first stop token (pads after a finished row are stop/pad ids too)."""
    for pos, tok in enumerate(ids):
        if tok in stop_ids:
            return ids[:pos]
    return ids
