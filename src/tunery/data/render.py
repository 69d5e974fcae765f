"""Render an `Example` to token ids plus a trained mask, in one tokenisation pass, for any chat template.

How the assistant turns are found without `{% generation %}` markers and without searching for the
answer text: for assistant turn i, the template renders ``messages[:i]`` with the generation prompt
(text up to where the answer starts) and ``messages[:i+1]`` without it (text up to where the turn
ends). Both must be prefixes of the whole conversation's rendering, so their lengths are character
offsets into it. Whitespace the template writes after the turn is formatting and is not trained; the
end-of-turn token (``<|im_end|>``, ``<|eot_id|>``, ``</s>``) is, so that the model learns to stop.
The whole text is then tokenised once, and a token is trained when its characters overlap a trained
span (overlap, not containment: a token that joins template text to the answer's first characters,
as SentencePiece's ``▁Paris`` does, is the answer's first token and must be learned). Control tokens
spelled inside message content are tokenised again as plain text (`tunery.data.control_tokens`), so
that only the template's own ``<|im_start|>``/``<|im_end|>`` are control tokens. Many examples are
tokenised in one batch call (`render_examples`).
"""

from __future__ import annotations

import bisect
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tunery.data.chat_template import TemplateRenderer
from tunery.data.control_tokens import ControlTokens, content_spans, plain_text_regions
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
    replay: bool = False  # a general conversation mixed in by data.replay (where kl_to_base applies)
    loss_weight: float = 1.0  # each trained token's loss is multiplied by this (replay under replay_weight: example)

    @property
    def num_trained(self) -> int:
        """How many tokens carry loss."""
        return sum(self.trained)

    @property
    def num_targets(self) -> int:
        """How many trained tokens are next-token targets (the loss's count: position 0 predicts nothing)."""
        return sum(self.trained[1:])


@dataclass
class Datasets:
    """What a method trains on: rendered training and validation rows, the validation examples
    themselves (graders during training answer their prompts), and warnings for the log."""

    train: list[Rendered]
    val: list[Rendered]
    warnings: list[str] = field(default_factory=list)
    val_examples: list[Example] = field(default_factory=list)
    retrieval: dict | None = None  # data.retrieval's index (RetrievalIndex.to_json), saved in the run folder
    labels: list[str] | None = None  # the training examples' final answers, for eval.choices: auto


def chat_template_of(tokenizer) -> str:
    """The Jinja chat template tunery renders with: the tokenizer's own, else `CHATML_TEMPLATE`."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: "default" is the chat one
        template = template.get("default") or next(iter(template.values()), None)
    return template or CHATML_TEMPLATE


def _render_text(template: TemplateRenderer, messages: list[Message], generation_prompt: bool) -> str:
    dicts = [{"role": m.role, "content": m.content} for m in messages]
    try:
        return template.render(dicts, generation_prompt)
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


class ChatRenderer:
    """Renders the conversations of one tokenizer: its chat template and its control tokens, looked up
    once for many examples."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.template = TemplateRenderer(tokenizer, chat_template_of(tokenizer))
        self.controls = ControlTokens.of(tokenizer)

    def text(self, messages: list[Message], generation_prompt: bool = False) -> str:
        return _render_text(self.template, messages, generation_prompt)

    def spans(self, messages: list[Message], train_on: str = "assistant") -> tuple[str, list[Span]]:
        """The rendered conversation and the character spans whose tokens are trained.

        Two renderings per trained assistant turn, one fewer for the last turn: the conversation up to
        and through the last message is the whole conversation, rendered already.
        """
        full = self.text(messages)
        if train_on == "all":
            return full, [(0, len(full))]
        turns = [i for i, m in enumerate(messages) if m.role == "assistant"]
        if train_on == "last":
            turns = turns[-1:]
        spans: list[Span] = []
        for i in turns:
            if messages[i].weight == 0:
                continue
            before = self.text(messages[:i], generation_prompt=True)
            through = full if i == len(messages) - 1 else self.text(messages[: i + 1])
            start = _prefix_length(full, before, i, "with the generation prompt")
            end = _prefix_length(full, through, i, "through the answer")
            while end > start and full[end - 1].isspace():
                end -= 1
            start = _after_empty_reasoning(full, start, end)
            if end > start:
                spans.append((start, end))
        return full, spans


def trained_spans(
    messages: list[Message], tokenizer, train_on: str = "assistant"
) -> tuple[str, list[Span]]:
    """The rendered conversation and the character spans whose tokens are trained."""
    return ChatRenderer(tokenizer).spans(messages, train_on)


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
    """Per token: does its (non-empty) character range overlap any span? Both lists are in text
    order, so token starts never decrease: each span's tokens are found by bisection, and only the
    tokens near a span are looked at (answers are a small share of most examples)."""
    mask = [False] * len(offsets)
    if not spans:
        return mask
    starts = [begin for begin, _ in offsets]
    for low, high in spans:
        first = bisect.bisect_left(starts, low)
        while first > 0 and offsets[first - 1][1] > low:  # tokens that start before the span
            first -= 1
        for index in range(first, bisect.bisect_left(starts, high)):
            begin, end = offsets[index]
            if end > begin and end > low:
                mask[index] = True
    return mask


def _no_offsets(exc: Exception) -> TuneryError:
    return TuneryError(
        "this tokenizer cannot report character offsets, which loss masking needs",
        why=str(exc),
        fix="load the model's fast tokenizer (tokenizer.json)",
    )


def encode_with_offsets(tokenizer, texts: list[str]) -> list[tuple[list[int], list[Span]]]:
    """Token ids and character offsets of each text, no special tokens added, in one batch call.

    A fast tokenizer's backend encodes the batch in Rust across threads; calling it directly also
    skips the per-call bookkeeping of ``tokenizer(...)`` (about a third of the time on short texts).
    The backend is used only when it has no truncation or padding set, which would change the ids.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        # `tokenizer(..., split_special_tokens=True)` leaves this flag set on the shared backend
        # until its next call; control tokens must be control tokens here, as the call would do.
        backend.encode_special_tokens = False
        return [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=False)]
    try:
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as exc:
        raise _no_offsets(exc) from exc
    return [
        (list(ids), [tuple(o) for o in offsets])
        for ids, offsets in zip(encoded["input_ids"], encoded["offset_mapping"])
    ]


def truncate(ids: list[int], trained: list[bool], max_length: int | None) -> Rendered:
    """Keep the first ``max_length`` tokens; say whether anything, and any trained token, was cut."""
    if max_length is None or len(ids) <= max_length:
        return Rendered(ids, trained, truncated=False, answer_cut=False)
    return Rendered(ids[:max_length], trained[:max_length], True, any(trained[max_length:]))


def render_texts(texts: list[str], tokenizer) -> list[tuple[list[int], list[bool]]]:
    """Raw texts: the tokenizer's own ids (with BOS where it adds one) plus EOS, all trained, so that
    documents end the way they do at pre-training. Control tokens spelled in the text are plain text."""
    eos = tokenizer.eos_token_id
    out = []
    for ids in tokenizer(texts, split_special_tokens=True)["input_ids"]:
        ids = list(ids)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        out.append((ids, [True] * len(ids)))
    return out


def render_text(text: str, tokenizer) -> tuple[list[int], list[bool]]:
    """One raw text, as `render_texts` renders it."""
    return render_texts([text], tokenizer)[0]


# Examples rendered per batch call of the tokenizer: large enough to keep its threads busy, small
# enough that the encodings of a large file are never all held at once.
BATCH = 512


def render_examples(
    examples: list[Example], tokenizer, train_on: str = "assistant", max_length: int | None = None
) -> Iterator[Rendered | TuneryError]:
    """`render_example` for many examples, in order, tokenised in batches; an example that cannot be
    rendered gives its `TuneryError` (naming its file and line) in its place instead of stopping.

    With more than one batch, tokenising batch k (Rust, which releases the GIL) runs in a worker
    thread while this thread renders the templates of batch k+1 and the caller consumes batch k-1.
    Every call into the tokenizer happens in that one worker: a tokenizer must not be changed (as
    ``split_special_tokens`` does) while another thread encodes with it.
    """
    if train_on not in TRAIN_ON:
        raise TuneryError(f"unknown train_on '{train_on}'", fix=f"use one of {', '.join(TRAIN_ON)}")
    renderer = ChatRenderer(tokenizer)
    batches = [examples[first : first + BATCH] for first in range(0, len(examples), BATCH)]
    if len(batches) <= 1:
        for batch in batches:
            prepared = _prepare(batch, renderer, train_on)
            yield from _finish(prepared, _tokenize(batch, prepared, tokenizer), max_length)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunery-tokenize") as worker:
        pending: deque = deque()
        for batch in batches:
            prepared = _prepare(batch, renderer, train_on)
            pending.append((prepared, worker.submit(_tokenize, batch, prepared, tokenizer)))
            if len(pending) > 1:
                done, future = pending.popleft()
                yield from _finish(done, future.result(), max_length)
        while pending:
            done, future = pending.popleft()
            yield from _finish(done, future.result(), max_length)


def _prepare(batch: list[Example], renderer: ChatRenderer, train_on: str) -> list:
    """Per example: None for raw text, (text, trained spans, content control spans) for a
    conversation, or the `TuneryError` that rendering it raised."""
    prepared: list = []
    for example in batch:
        if example.messages is None:
            prepared.append(None)
            continue
        try:
            text, spans = renderer.spans(example.messages, train_on)
            controls = content_spans(renderer.controls, example.messages, text, renderer.text)
            prepared.append((text, spans, controls))
        except TuneryError as exc:
            prepared.append(TuneryError(f"{example.location}: {exc.what}", exc.why, exc.fix))
    return prepared


def _tokenize(batch: list[Example], prepared: list, tokenizer) -> list:
    """Every tokenizer call of a batch: per example, (ids, offsets) of a conversation (control
    tokens from content re-tokenised as text), (ids, trained) of a raw text, or None after an error."""
    chats = [item for item in prepared if isinstance(item, tuple)]
    encoded = iter(encode_with_offsets(tokenizer, [text for text, _, _ in chats]) if chats else [])
    raw = [e.text or "" for e in batch if e.messages is None]
    texts = iter(render_texts(raw, tokenizer) if raw else [])
    out: list = []
    for item in prepared:
        if isinstance(item, TuneryError):
            out.append(None)
        elif item is None:
            out.append(next(texts))
        else:
            text, _, controls = item
            ids, offsets = next(encoded)
            if controls:
                ids, offsets = plain_text_regions(tokenizer, text, ids, offsets, controls)
            out.append((ids, offsets))
    return out


def _finish(prepared: list, tokenized: list, max_length: int | None) -> Iterator[Rendered | TuneryError]:
    for item, tokens in zip(prepared, tokenized):
        if isinstance(item, TuneryError):
            yield item
        elif item is None:
            yield truncate(*tokens, max_length)
        else:
            ids, offsets = tokens
            yield truncate(ids, mask_from_offsets(offsets, item[1]), max_length)


def render_example(
    example: Example, tokenizer, train_on: str = "assistant", max_length: int | None = None
) -> Rendered:
    """Token ids and trained mask of one example, cut to ``max_length`` tokens.

    ``train_on``: ``assistant`` trains every assistant turn whose weight is not 0 (with its
    end-of-turn token), ``all`` every token, ``last`` only the last assistant turn (if its weight is
    not 0). Raw text is always trained in full. Control tokens spelled in the content are tokenised as
    plain text. Raises `TuneryError` naming the example's file and line when its template cannot be
    rendered or located.
    """
    result = next(render_examples([example], tokenizer, train_on, max_length))
    if isinstance(result, TuneryError):
        raise result
    return result
