"""Evaluation examples: a prompt conversation, the reference answer, and optional graders of its own.

Any conversation format tunery reads for training works (messages, ShareGPT, Alpaca,
prompt/completion; JSONL, JSON, CSV, Parquet): in each example the last assistant message is the
reference and the conversation before it is the prompt. A record may add ``"graders": [...]``
(see `tunery.graders.spec`), which the forgetting probe uses to score each item its own way. Every
field of the record, as read from the file, is kept in `EvalItem.record` for the graders that read one
(``tests`` for code_tests, any field for a user's python function).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunery.data.messages import Example, Message
from tunery.errors import TuneryError
from tunery.graders import Grader, parse_graders


@dataclass
class EvalItem:
    """One evaluation example."""

    id: str  # file:line
    prompt: list[dict]  # the conversation before the reference, as chat-template dicts
    reference: str
    example: Example  # prompt + reference, for the answer loss
    graders: list[Grader] | None = None  # the record's own graders, if it names any
    record: dict = field(default_factory=dict)  # every field of the record as read (tests, answer ...)


def as_dicts(messages: list[Message]) -> list[dict]:
    """Messages as the dicts a chat template takes (weights dropped)."""
    return [{"role": m.role, "content": m.content} for m in messages]


def split_example(example: Example) -> tuple[list[Message], Message]:
    """(prompt messages, reference message): the last assistant turn and what comes before it."""
    messages = example.messages or []
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=None)
    if last is None or not any(m.role == "user" for m in messages[:last]):
        raise TuneryError(f"{example.location}: needs a user message followed by an assistant "
                          "message (the reference answer)")
    return messages[:last], messages[last]


def prompt_text(example: Example) -> str:
    """The non-system text of an example's prompt: what retrieval and overlap checks compare."""
    prompt, _ = split_example(example)
    return "\n".join(m.content for m in prompt if m.role != "system")


def shot_messages(example: Example) -> list[Message]:
    """A training example as in-context turns: its user and assistant turns through the last answer
    (its system message is dropped: the evaluated prompt brings its own)."""
    prompt, answer = split_example(example)
    return [m for m in prompt if m.role != "system"] + [Message("assistant", answer.content)]


def _own_graders(records: dict[int, object], example: Example) -> list[Grader] | None:
    record = records.get(example.line)
    specs = record.get("graders") if isinstance(record, dict) else None
    if specs is None:
        return None
    if not isinstance(specs, list) or not specs:
        raise TuneryError(f"{example.location}: 'graders' must be a non-empty list of grader specs")
    try:
        return parse_graders(specs)
    except TuneryError as exc:
        raise TuneryError(f"{example.location}: {exc.what}", exc.why, exc.fix) from exc


def missing_fields(graders: list, items: list[EvalItem]) -> str | None:
    """'file:line: grader code_tests reads the record field 'tests', which it lacks' for the first
    item where a field some grader reads is missing or empty (its own graders included), else None:
    checked before any answer is generated."""
    for item in items:
        for grader in list(graders) + list(item.graders or []):
            for name in getattr(grader, "reads", ()):
                if item.record.get(name) in (None, "", []):
                    return f"{item.id}: grader {grader.label} reads the record field '{name}', which it lacks"
    return None


def load_conversations(path: str, fmt: str = "auto") -> list[Example]:
    """Every conversation example of a file; any broken record is an error listing all of them."""
    from tunery.data.dataset import load_file
    from tunery.data.problems import raise_if_errors

    examples, problems, _ = load_file(str(path), fmt)
    raise_if_errors(problems, what=str(path))
    texts = [e for e in examples if e.messages is None]
    if texts:
        raise TuneryError(f"{texts[0].location}: raw text record; evaluation needs conversations with "
                          "an assistant answer", fix="write records in messages format")
    return examples


def read_eval_items(path: str, fmt: str = "auto", limit: int | None = None) -> list[EvalItem]:
    """The evaluation items of a file, in file order; the first `limit` only when given."""
    from tunery.data.readers import read_records

    examples = load_conversations(path, fmt)
    if limit is not None:
        examples = examples[:limit]
    records = dict(read_records(str(path))[0])
    items = []
    for example in examples:
        prompt, reference = split_example(example)
        record = records.get(example.line)
        items.append(EvalItem(example.location, as_dicts(prompt), reference.content, example,
                              _own_graders(records, example), dict(record) if isinstance(record, dict) else {}))
    if not items:
        raise TuneryError(f"{path} holds no evaluation example")
    return items
