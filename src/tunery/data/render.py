"""Render an `Example` to token ids plus a trained mask, in one tokenisation pass, for any chat template.

How the assistant turns are found without `{% generation %}` markers and without searching for the
answer text: for assistant turn i, the template renders ``messages[:i]`` with the generation prompt
(text up to where the answer starts) and ``messages[:i+1]`` without it (text up to where the turn
ends). Both must be prefixes of the whole conversation's rendering, so their lengths are character
offsets into it. Whitespace the template writes after the turn is formatting and is not trained; the
end-of-turn token (``<|im_end|>``, ``<|eot_id|>``, ``</s>``) is, so that the model learns to stop.
The whole text is then tokenised once, and a token is trained when its characters overlap a trained
span (overlap, not containment: a token that joins template text to the answer's first characters,
as SentencePiece's ``▁Paris`` does, is the answer's first token and must be learned).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunery.data.messages import Example, Message
from tunery.errors import TuneryError

TRAIN_ON = ("assistant", "all", "last")

# Used when a tokenizer has no chat template of its own: ChatML, with no default system message.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

Span = tuple[int, int]  # [start, end) character offsets into the rendered text


@dataclass
class Rendered:
    """Token ids of one example and, per token, whether the loss is computed on it."""

    ids: list[int]
    trained: list[bool]  # same length as ids
    truncated: bool  # True when cut at max_length
    answer_cut: bool  # True when a trained token was cut off by truncation

    @property
    def num_trained(self) -> int:
        """How many tokens carry loss."""
        return sum(self.trained)


def chat_template_of(tokenizer) -> str:
    """The Jinja chat template tunery renders with: the tokenizer's own, else `CHATML_TEMPLATE`."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: "default" is the chat one
        template = template.get("default") or next(iter(template.values()), None)
    return template or CHATML_TEMPLATE


def _render_text(tokenizer, template: str, messages: list[Message], generation_prompt: bool) -> str:
    dicts = [{"role": m.role, "content": m.content} for m in messages]
    try:
        return tokenizer.apply_chat_template(
            dicts, tokenize=False, add_generation_prompt=generation_prompt, chat_template=template
        )
    except Exception as exc:  # Jinja raises many types, and templates call raise_exception()
        raise TuneryError(
            f"the chat template failed to render {len(messages)} message(s): {type(exc).__name__}: {exc}",
            why="templates often insist on an order of roles (e.g. user/assistant alternating, "
            "system first)",
            fix="reorder the messages as the model's template expects, or fix the record",
        ) from exc


def _first_difference(a: str, b: str) -> int:
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return min(len(a), len(b))


def _prefix_length(full: str, part: str, turn: int, template_role: str) -> int:
    if full.startswith(part):
        return len(part)
    at = _first_difference(full, part)
    raise TuneryError(
        f"the chat template is not prefix-stable, so tunery cannot locate assistant turn {turn}",
        why=f"rendering the conversation up to that turn ({template_role}) does not give the start of "
        f"the whole conversation's text; they differ at character {at}: "
        f"{part[at : at + 40]!r} vs {full[at : at + 40]!r}",
        fix="set a chat template that renders earlier turns the same way whatever follows them, "
        "or use train_on: all",
    )


def trained_spans(
    messages: list[Message], tokenizer, train_on: str = "assistant"
) -> tuple[str, list[Span]]:
    """The rendered conversation and the character spans whose tokens are trained."""
    template = chat_template_of(tokenizer)
    full = _render_text(tokenizer, template, messages, generation_prompt=False)
    if train_on == "all":
        return full, [(0, len(full))]
    turns = [i for i, m in enumerate(messages) if m.role == "assistant"]
    if train_on == "last":
        turns = turns[-1:]
    spans: list[Span] = []
    for i in turns:
        if messages[i].weight == 0:
            continue
        before = _render_text(tokenizer, template, messages[:i], generation_prompt=True)
        through = _render_text(tokenizer, template, messages[: i + 1], generation_prompt=False)
        start = _prefix_length(full, before, i, "with the generation prompt")
        end = _prefix_length(full, through, i, "through the answer")
        while end > start and full[end - 1].isspace():
            end -= 1
        start = _after_empty_reasoning(full, start, end)
        if end > start:
            spans.append((start, end))
    return full, spans


# An empty reasoning block at the start of an answer: "<think>\n\n</think>\n\n" (Qwen3).
_EMPTY_REASONING = re.compile(r"<think>\s*</think>\s*")


def _after_empty_reasoning(full: str, start: int, end: int) -> int:
    """Where training starts in an answer whose rendering opens with an empty reasoning block.

    Qwen3's template writes ``<think>\n\n</think>\n\n`` before a final answer that has no reasoning:
    boilerplate that the template writes itself, the same in every example, not part of the answer. It
    is left out of the loss; a block with reasoning in it is the answer's and is trained.
    Only the text right at the answer's start is looked at (never a search through the answer)."""
    found = _EMPTY_REASONING.match(full, start, end)
    return found.end() if found else start


def mask_from_offsets(offsets: list[tuple[int, int]], spans: list[Span]) -> list[bool]:
    """Per token: does its character range overlap any span? Both lists are in text order."""
    mask: list[bool] = []
    k = 0
    for begin, end in offsets:
        while k < len(spans) and spans[k][1] <= begin:
            k += 1
        inside = k < len(spans) and end > begin and begin < spans[k][1] and end > spans[k][0]
        mask.append(inside)
    return mask


def _tokenize_with_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as exc:
        raise TuneryError(
            "this tokenizer cannot report character offsets, which loss masking needs",
            why=str(exc),
            fix="load the model's fast tokenizer (tokenizer.json)",
        ) from exc
    return list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]


def truncate(ids: list[int], trained: list[bool], max_length: int | None) -> Rendered:
    """Keep the first ``max_length`` tokens; say whether anything, and any trained token, was cut."""
    if max_length is None or len(ids) <= max_length:
        return Rendered(ids, trained, truncated=False, answer_cut=False)
    return Rendered(ids[:max_length], trained[:max_length], True, any(trained[max_length:]))


def render_text(text: str, tokenizer) -> tuple[list[int], list[bool]]:
    """Raw text: the tokenizer's own ids (with BOS where it adds one) plus EOS, all trained, so
    that documents end the way they do at pre-training."""
    ids = list(tokenizer(text)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return ids, [True] * len(ids)


def render_example(
    example: Example, tokenizer, train_on: str = "assistant", max_length: int | None = None
) -> Rendered:
    """Token ids and trained mask of one example, cut to ``max_length`` tokens.

    ``train_on``: ``assistant`` trains every assistant turn whose weight is not 0 (with its
    end-of-turn token), ``all`` every token, ``last`` only the last assistant turn (if its weight is
    not 0). Raw text is always trained in full. Raises `TuneryError` naming the example's file and
    line when its template cannot be rendered or located.
    """
    if train_on not in TRAIN_ON:
        raise TuneryError(f"unknown train_on '{train_on}'", fix=f"use one of {', '.join(TRAIN_ON)}")
    if example.messages is None:
        ids, trained = render_text(example.text or "", tokenizer)
        return truncate(ids, trained, max_length)
    try:
        text, spans = trained_spans(example.messages, tokenizer, train_on)
    except TuneryError as exc:
        raise TuneryError(f"{example.location}: {exc.what}", exc.why, exc.fix) from exc
    ids, offsets = _tokenize_with_offsets(tokenizer, text)
    return truncate(ids, mask_from_offsets(offsets, spans), max_length)
