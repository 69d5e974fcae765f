"""The one normal form every dataset format is converted to: `Example`s of `Message`s (or raw text).

Readers and format converters produce these; rendering, linting and the trainer only ever see them.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One turn of a conversation.

    ``weight`` follows OpenAI's fine-tuning format: 0 means "do not train on this assistant turn",
    1 or None (the default) means it is trained. Only assistant messages may carry a weight.
    """

    role: str
    content: str
    weight: int | None = None


@dataclass
class Example:
    """One training record, located in its source file so that every message can point at it.

    ``line`` is 1-based: the line of a JSONL file, the file line where a CSV row starts, the data row
    of a Parquet file, or the index + 1 in a JSON array. Exactly one of ``messages`` (conversations)
    and ``text`` (raw text for continued pre-training) is set.
    """

    source: str
    line: int
    messages: list[Message] | None = None
    text: str | None = None

    @property
    def location(self) -> str:
        """``file:line``, the prefix of every message about this example."""
        return f"{self.source}:{self.line}"

    def key(self) -> tuple:
        """What makes two examples the same for duplicate and train/validation overlap checks.

        Weights are left out on purpose: the same conversation with a different weight still leaks
        its text into validation.
        """
        if self.messages is None:
            return ("text", self.text)
        return ("messages",) + tuple((m.role, m.content) for m in self.messages)
