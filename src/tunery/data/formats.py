"""Record formats, their detection, and converters to the one normal form (`Example`).

Formats (TRL's taxonomy, minus preference data which SFT cannot use):

- ``messages``: OpenAI chat, ``{"messages": [{"role", "content", "weight"?}, ...]}``
- ``sharegpt``: ``{"conversations": [{"from": "human|gpt|...", "value"}, ...]}``
- ``alpaca``: ``instruction``, optional ``input`` and ``system``, ``output``
- ``prompt_completion``: ``prompt`` + ``completion``, as strings or as lists of messages
- ``text``: raw ``text`` for continued pre-training

A file holds one format, detected from the keys of its records (or forced). Every problem of a
record is reported, not only the first, so that one pass of `tunery data check` finds them all.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from tunery.data.messages import ROLES, Example, Message
from tunery.data.problems import Problem
from tunery.data.readers import Record

# A UTF-16 surrogate on its own: what "\\ud83d" without its pair decodes to.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")

SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}

# Checked in order: the first key present (with a value) names the format.
DETECT_KEYS = (
    ("chosen", "preference"),  # before "prompt": preference records often carry a prompt too
    ("messages", "messages"),
    ("conversations", "sharegpt"),
    ("instruction", "alpaca"),
    ("output", "alpaca"),
    ("prompt", "prompt_completion"),
    ("completion", "prompt_completion"),
    ("text", "text"),
)


def detect_format(record: dict, present: bool = False) -> str | None:
    """The format a record's keys point to (``preference`` for chosen/rejected), or None. Keys
    count when their value is not null, or with ``present`` when they are there at all."""
    for key, fmt in DETECT_KEYS:
        if (key in record) if present else (record.get(key) is not None):
            return fmt
    return None


class _Collector:
    """Problems about one record, all carrying its file and line."""

    def __init__(self, source: str, line: int):
        self.source, self.line = source, line
        self.problems: list[Problem] = []

    def add(self, kind: str, reason: str) -> None:
        """Record an error of this record."""
        self.problems.append(Problem(self.source, self.line, reason, "error", kind))

    def text(self, value: Any, name: str, *, missing: str = "missing_key") -> str | None:
        """``value`` if it is a non-blank string; otherwise record why and return None."""
        if value is None:
            self.add(missing, f"missing '{name}'")
        elif not isinstance(value, str):
            self.add("wrong_type", f"'{name}' must be a string, got {_type_name(value)}")
        elif not value.strip():
            self.add("empty_content", f"'{name}' is empty")
        elif self.is_text(value, f"'{name}'"):
            return value
        return None

    def is_text(self, value: str, what: str) -> bool:
        """False (and an error) when ``value`` holds a lone surrogate: JSON can escape one
        (``"\\udc80"``), but no tokenizer takes it, and encoding it as UTF-8 fails."""
        found = None if value.isascii() else LONE_SURROGATE.search(value)
        if found is None:
            return True
        self.add(
            "invalid_text",
            f"{what} holds a lone surrogate {found.group()!r} (half of a UTF-16 pair), which is not text",
        )
        return False


def _type_name(value: Any) -> str:
    names = {
        dict: "an object",
        list: "a list",
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
    }
    return names.get(type(value), type(value).__name__)


def _weight(c: _Collector, item: dict, role: str | None, where: str) -> int | None:
    weight = item.get("weight")
    if weight is None:
        return None
    if role is not None and role != "assistant":
        c.add(
            "bad_weight",
            f"{where}: 'weight' is only allowed on assistant messages (role is {role})",
        )
    elif isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight not in (0, 1):
        c.add("bad_weight", f"{where}: 'weight' must be 0 or 1, got {weight!r}")
    else:
        return int(weight)
    return None


def _messages(
    c: _Collector,
    items: Any,
    name: str,
    role_key: str = "role",
    content_key: str = "content",
    role_map: dict[str, str] | None = None,
) -> list[Message] | None:
    """Convert a list of message objects, recording every problem of every message."""
    if items is None:
        c.add("missing_key", f"missing '{name}'")
        return None
    if not isinstance(items, list):
        c.add("wrong_type", f"'{name}' must be a list of messages, got {_type_name(items)}")
        return None
    known = role_map or {role: role for role in ROLES}
    out: list[Message] = []
    before = len(c.problems)
    for index, item in enumerate(items):
        where = f"{name}[{index}]"
        if not isinstance(item, dict):
            c.add("wrong_type", f"{where} must be an object, got {_type_name(item)}")
            continue
        role = item.get(role_key)
        if role is None:
            c.add("missing_role", f"{where}: missing '{role_key}'")
        elif not isinstance(role, str) or role not in known:
            c.add(
                "unknown_role",
                f"{where}: unknown role {role!r} (expected one of {', '.join(known)})",
            )
            role = None
        else:
            role = known[role]
        content = item.get(content_key)
        if content is None:
            c.add("missing_content", f"{where}: missing '{content_key}'")
        elif not isinstance(content, str):
            c.add(
                "wrong_type",
                f"{where}: '{content_key}' must be a string, got {_type_name(content)}",
            )
            content = None
        elif not content.strip():
            c.add("empty_content", f"{where}: '{content_key}' is empty")
        elif not c.is_text(content, f"{where}: '{content_key}'"):
            content = None
        weight = _weight(c, item, role, where)
        if role is not None and content is not None:
            out.append(Message(role, content, weight))
    return out if len(c.problems) == before else None


def check_conversation(c: _Collector, messages: list[Message]) -> None:
    """A conversation needs an assistant turn to learn from, and must end on one."""
    if not messages:
        c.add("empty_conversation", "the conversation has no messages")
    elif not any(m.role == "assistant" for m in messages):
        c.add("no_assistant", "no assistant message: there is nothing to train on")
    elif messages[-1].role != "assistant":
        c.add(
            "last_turn_not_assistant",
            f"the conversation ends on a {messages[-1].role} turn; the last message must be the "
            "assistant's answer (drop the trailing message or add the answer)",
        )


def _from_messages(c: _Collector, record: dict) -> list[Message] | None:
    return _messages(c, record.get("messages"), "messages")


def _from_sharegpt(c: _Collector, record: dict) -> list[Message] | None:
    return _messages(
        c, record.get("conversations"), "conversations", "from", "value", SHAREGPT_ROLES
    )


def _from_alpaca(c: _Collector, record: dict) -> list[Message] | None:
    instruction = c.text(record.get("instruction"), "instruction")
    output = c.text(record.get("output"), "output")
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        c.add("wrong_type", f"'input' must be a string, got {_type_name(extra)}")
    elif extra is not None:
        c.is_text(extra, "'input'")
    system = record.get("system")
    if system is not None:
        system = c.text(system, "system")
    if c.problems:
        return None
    user = instruction + (f"\n\n{extra}" if extra and extra.strip() else "")
    head = [Message("system", system)] if system else []
    return head + [Message("user", user), Message("assistant", output)]


def _from_prompt_completion(c: _Collector, record: dict) -> list[Message] | None:
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, list) or isinstance(completion, list):
        # TRL's conversational prompt-completion: both sides are lists of messages.
        head = _messages(c, prompt, "prompt")
        tail = _messages(c, completion, "completion")
        if tail is not None and any(m.role != "assistant" for m in tail):
            c.add("unknown_role", "'completion' messages must all have role assistant")
        return None if c.problems else head + tail
    prompt = c.text(prompt, "prompt")
    completion = c.text(completion, "completion")
    if c.problems:
        return None
    return [Message("user", prompt), Message("assistant", completion)]


CONVERTERS = {
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "alpaca": _from_alpaca,
    "prompt_completion": _from_prompt_completion,
}


def to_example(
    record: Any, fmt: str, source: str, line: int
) -> tuple[Example | None, list[Problem]]:
    """Convert one record of format ``fmt``; the example is None when the record has any problem."""
    c = _Collector(source, line)
    if not isinstance(record, dict):
        c.add("wrong_type", f"a record must be a JSON object, got {_type_name(record)}")
        return None, c.problems
    if fmt == "text":
        text = c.text(record.get("text"), "text")
        return (Example(source, line, text=text) if text is not None else None), c.problems
    messages = CONVERTERS[fmt](c, record)
    if messages is not None:
        check_conversation(c, messages)
    if c.problems:
        return None, c.problems
    return Example(source, line, messages=messages), []


EXPECTED_FORMATS = "expected messages, conversations, instruction/output, prompt/completion or text"
# Files whose records all share one set of columns: a wrong header is said once, not once per row.
TABULAR_SUFFIXES = {".csv": 1, ".parquet": 0}  # suffix -> the line a header problem points at


def _unknown_format(source: str, line: int, record: dict) -> Problem:
    keys = ", ".join(sorted(record)) or "none"
    reason = f"unknown record format (keys: {keys}); {EXPECTED_FORMATS}"
    return Problem(source, line, reason, kind="unknown_format")


def _no_known_format(source: str, records: list[Record]) -> list[Problem]:
    """Problems for a file in which no record has the keys of any format."""
    objects = [(line, r) for line, r in records if isinstance(r, dict)]
    suffix = Path(source).suffix.lower()
    if suffix in TABULAR_SUFFIXES and objects:
        columns = ", ".join(sorted(objects[0][1])) or "none"
        reason = f"unknown record format: the columns are {columns}; {EXPECTED_FORMATS}"
        return [Problem(source, TABULAR_SUFFIXES[suffix], reason, kind="unknown_format")]
    return [_unknown_format(source, line, record) for line, record in objects]


def file_format(source: str, records: list[Record]) -> tuple[str | None, list[Problem]]:
    """The format most records of a file have, and a problem for each record that has another one
    (or none that is known). Ties go to the format seen first. When no record has a known format,
    every object is reported as such (once for a CSV or Parquet file: its columns are wrong)."""
    problems: list[Problem] = []
    seen: Counter[str] = Counter()
    for _line, record in records:
        fmt = detect_format(record) if isinstance(record, dict) else None
        if fmt is not None:
            seen[fmt] += 1
    if not seen:
        return None, _no_known_format(source, records)
    majority = seen.most_common(1)[0][0]
    for line, record in records:
        if not isinstance(record, dict):
            continue  # reported by to_example as wrong_type
        fmt = detect_format(record)
        if fmt is None and detect_format(record, present=True) == majority:
            continue  # the file's keys, left empty: to_example says which are missing
        keys = ", ".join(sorted(record)) or "none"
        if fmt is None:
            problems.append(_unknown_format(source, line, record))
        elif fmt != majority:
            problems.append(
                Problem(
                    source,
                    line,
                    f"mixed formats: this record is {fmt} (keys: {keys}) but {seen[majority]} of "
                    f"{len(records)} records in this file are {majority}; keep one format per file",
                    kind="mixed_formats",
                )
            )
    return majority, problems


def convert_records(
    source: str, records: list[Record], fmt: str = "auto"
) -> tuple[list[Example], list[Problem], str | None]:
    """Convert every record of one file. Returns (examples, problems, the format used)."""
    if fmt != "auto" and fmt not in FORMATS:
        problem = Problem(
            source,
            0,
            f"unknown format '{fmt}' (use auto or one of {', '.join(FORMATS)})",
            kind="unknown_format",
        )
        return [], [problem], None
    problems: list[Problem] = []
    used = fmt
    if fmt == "auto":
        used, problems = file_format(source, records)
        if used == "preference":
            reason = "preference data (chosen/rejected) cannot be used for SFT or CPT"
            return [], [Problem(source, 0, reason, kind="unsupported_format")], used
    examples: list[Example] = []
    if used is None:  # no known format: the objects were reported above, non-objects are not
        skip = {line for line, record in records if isinstance(record, dict)}
    else:
        skip = {p.line for p in problems}
    for line, record in records:
        if line in skip:
            continue
        example, found = to_example(record, used or "text", source, line)
        problems.extend(found)
        if example is not None:
            examples.append(example)
    problems.sort(key=lambda p: p.line)
    return examples, problems, used
