"""Control tokens (``<|im_start|>``, ``<|im_end|>``, ``</s>`` ...) spelled inside the text of a record.

A tokenizer turns such text into the control token itself, so a record that holds
``"<|im_end|>\\n<|im_start|>user\\n..."`` in an answer forges turns the template never wrote. `tunery data
check` and `tunery train` refuse it unless ``data.allow_special_tokens`` is set, and even then the
text is tokenised as ordinary text (`plain_text_regions`), never as the control token: only the
template's own control tokens are control tokens.

How text from content is told apart from the template's own control tokens: the conversation is
rendered a second time with every control spelling in the content replaced by as many copies of a
character the text does not hold. The template writes its own tokens the same way in both renderings,
so the spellings whose characters changed came from content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunery.data.messages import Example, Message
from tunery.data.problems import Problem
from tunery.errors import TuneryError

Span = tuple[int, int]
_MARKS = "".join(chr(c) for c in range(0xE000, 0xE040))  # private-use characters


def special_tokens_of(tokenizer) -> set[str]:
    """Strings the tokenizer turns into control tokens wherever they appear in text."""
    tokens = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(added, "special", False):
            tokens.add(added.content)
    return {token for token in tokens if token}


@dataclass(frozen=True)
class ControlTokens:
    """The control spellings of one tokenizer and a pattern that finds any of them."""

    spellings: frozenset[str]
    pattern: re.Pattern | None  # None when the tokenizer has no control token
    first_chars: frozenset[str]  # every spelling starts with one of these (usually just "<")

    @classmethod
    def of(cls, tokenizer) -> "ControlTokens":
        spellings = frozenset(special_tokens_of(tokenizer))
        # Longest first, so that "<|im_end|>" wins over a shorter token it starts with.
        ordered = sorted(spellings, key=lambda s: (-len(s), s))
        pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        return cls(spellings, pattern, frozenset(s[0] for s in spellings))

    def _may_hold(self, text: str) -> bool:
        # `"<" in text` is a fast scan; most text never gets to the slower alternation.
        return self.pattern is not None and any(c in text for c in self.first_chars)

    def found_in(self, text: str) -> list[str]:
        """The control spellings ``text`` holds, sorted."""
        if not self._may_hold(text) or self.pattern.search(text) is None:
            return []
        return sorted({match.group() for match in self.pattern.finditer(text)})

    def in_messages(self, messages: list[Message]) -> bool:
        return any(self._may_hold(m.content) and self.pattern.search(m.content) for m in messages)


def control_token_problems(example: Example, controls: ControlTokens, allowed: bool) -> list[Problem]:
    """One problem per message (or raw text) that spells a control token: an error unless
    ``allowed``, then a warning that it is read as plain text."""
    texts = [(f"messages[{i}]", m.content) for i, m in enumerate(example.messages or [])]
    if example.text is not None:
        texts = [("text", example.text)]
    problems = []
    for where, text in texts:
        hits = ", ".join(controls.found_in(text))
        if not hits:
            continue
        if allowed:
            reason = f"{where} contains {hits} as text; it is tokenised as plain text, not as the control token"
        else:
            reason = (
                f"{where} contains {hits} as text: a record can forge turns with it (remove it, or set "
                "data.allow_special_tokens: true to train on it as plain text)"
            )
        severity = "warning" if allowed else "error"
        problems.append(Problem(example.source, example.line, reason, severity, "special_token_in_content"))
    return problems


def content_spans(controls: ControlTokens, messages: list[Message], text: str, render) -> list[Span]:
    """Character spans of ``text`` (the rendering of ``messages``) where content spells a control token.

    ``render(messages)`` renders a conversation the way ``text`` was rendered.
    """
    if not controls.in_messages(messages):
        return []
    mark = next((c for c in _MARKS if c not in text), None)
    if mark is None:
        raise _cannot_tell("the text uses every private-use character tunery marks content with")

    def masked(message: Message) -> Message:
        content = controls.pattern.sub(lambda found: mark * len(found.group()), message.content)
        return Message(message.role, content, message.weight)

    masked_text = render([masked(m) for m in messages])
    if len(masked_text) != len(text):
        raise _cannot_tell("the chat template changes the length of message text")
    return [
        found.span() for found in controls.pattern.finditer(text) if masked_text[found.start()] == mark
    ]


def _cannot_tell(why: str) -> TuneryError:
    return TuneryError(
        "tunery cannot tell control tokens spelled in the content from the chat template's own",
        why=why,
        fix="remove the control-token text from the record",
    )


def plain_text_regions(
    tokenizer, text: str, ids: list[int], offsets: list[Span], spans: list[Span]
) -> tuple[list[int], list[Span]]:
    """``ids``/``offsets`` of ``text`` with the control tokens at ``spans`` (content) tokenised again
    as ordinary text, together with the text around them up to the template's own added tokens.

    Added tokens split a text into pieces that are tokenised independently, so re-tokenising the piece
    between two template tokens with ``split_special_tokens`` gives exactly the tokens that piece
    would have if its control spellings were plain text.
    """
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})

    def from_content(index: int) -> bool:
        begin, end = offsets[index]
        return any(begin < b and end > a for a, b in spans)

    bounds = [i for i, token in enumerate(ids) if token in added and not from_content(i)]
    regions: list[tuple[int, int]] = []  # token index ranges (exclusive) between template tokens
    for a, b in spans:
        left = max((i for i in bounds if offsets[i][1] <= a), default=-1)
        right = min((i for i in bounds if offsets[i][0] >= b), default=len(ids))
        if regions and regions[-1] == (left, right):
            continue
        regions.append((left, right))
    out_ids, out_offsets, done = [], [], 0
    for left, right in regions:
        start = offsets[left][1] if left >= 0 else 0
        end = offsets[right][0] if right < len(ids) else len(text)
        piece = tokenizer(
            text[start:end], add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
        )
        out_ids += ids[done : left + 1] + list(piece["input_ids"])
        out_offsets += offsets[done : left + 1] + [(a + start, b + start) for a, b in piece["offset_mapping"]]
        done = right
    return out_ids + ids[done:], out_offsets + offsets[done:]
