"""Records for preference and reinforcement methods, converted to one normal form each.

- Pairs (DPO, ORPO, reward models): a prompt, a better (`chosen`) and a worse (`rejected`) answer.
  Read from TRL's explicit form `{"prompt", "chosen", "rejected"}` (strings, or lists of messages),
  TRL's implicit form `{"chosen": [...], "rejected": [...]}` (two whole conversations that share their
  prompt), and OpenAI's preference JSONL `{"input": {"messages": [...]}, "preferred_output": [...],
  "non_preferred_output": [...]}`. An optional number `margin` says how much better chosen is (reward
  models can use it).
- Feedback (KTO): `{"prompt", "completion", "label": true|false}`, one answer judged alone.
- Prompts (RL): `{"prompt": ...}` or `{"messages": [...]}` ending on a user turn; every other field of
  the record (`answer`, `tests` ...) is kept for the graders that score the completions.

Every problem of every record is reported with its file and line, as for the SFT formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunery.data.formats import _Collector, _messages, _type_name
from tunery.data.messages import Example, Message
from tunery.data.problems import Problem, raise_if_errors
from tunery.data.readers import read_records
from tunery.data.render import Datasets, Rendered, render_example
from tunery.errors import TuneryError

PAIR_KEYS = ("chosen", "preferred_output")
PROMPT_FIELDS = ("prompt", "messages", "input")


@dataclass
class PairExample:
    """A prompt with a better and a worse answer (each a list of assistant messages, usually one)."""

    source: str
    line: int
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    margin: float | None = None

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}"

    def conversation(self, side: str) -> Example:
        """The prompt followed by one side, as an ordinary conversation."""
        answer = self.chosen if side == "chosen" else self.rejected
        return Example(self.source, self.line, messages=self.prompt + answer)


@dataclass
class FeedbackExample:
    """A prompt with one answer and a verdict on it (KTO's unpaired data)."""

    source: str
    line: int
    prompt: list[Message]
    completion: list[Message]
    desirable: bool

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}"

    def conversation(self) -> Example:
        return Example(self.source, self.line, messages=self.prompt + self.completion)


@dataclass
class PromptExample:
    """A prompt to answer (online RL), with the record's other fields for the graders."""

    source: str
    line: int
    prompt: list[Message]
    fields: dict = field(default_factory=dict)

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}"


def _side(c: _Collector, value: Any, name: str) -> list[Message] | None:
    """A string answer, or a list of messages that are all the assistant's."""
    if isinstance(value, str) or value is None:
        text = c.text(value, name)
        return None if text is None else [Message("assistant", text)]
    messages = _messages(c, value, name)
    if messages is not None and any(m.role != "assistant" for m in messages):
        c.add("unknown_role", f"'{name}' must hold assistant messages only")
        return None
    return messages


def _prompt(c: _Collector, value: Any, name: str = "prompt") -> list[Message] | None:
    """A string prompt (one user turn) or a list of messages ending on a user turn."""
    if isinstance(value, str) or value is None:
        text = c.text(value, name)
        return None if text is None else [Message("user", text)]
    messages = _messages(c, value, name)
    if messages is not None and (not messages or messages[-1].role != "user"):
        c.add("last_turn_not_user", f"'{name}' must end on a user turn (the answer follows it)")
        return None
    return messages


def _split_implicit(c: _Collector, chosen: Any, rejected: Any):
    """TRL's implicit prompt: two whole conversations whose last assistant turn differs."""
    whole = [_messages(c, chosen, "chosen"), _messages(c, rejected, "rejected")]
    if None in whole:
        return None
    parts = []
    for name, messages in zip(("chosen", "rejected"), whole):
        if not messages or messages[-1].role != "assistant":
            c.add("last_turn_not_assistant", f"'{name}' must end on the assistant's answer")
            return None
        parts.append((messages[:-1], messages[-1:]))
    (prompt, good), (other_prompt, bad) = parts
    if [(m.role, m.content) for m in prompt] != [(m.role, m.content) for m in other_prompt]:
        c.add("prompt_mismatch", "'chosen' and 'rejected' answer different prompts: every turn before the "
              "last answer must be the same on both sides")
        return None
    return prompt, good, bad


def _pair_parts(c: _Collector, record: dict):
    if "preferred_output" in record or "non_preferred_output" in record:  # OpenAI's preference JSONL
        source = record.get("input")
        if not isinstance(source, dict):
            c.add("wrong_type", f"'input' must be an object with 'messages', got {_type_name(source)}")
            return None
        prompt = _prompt(c, source.get("messages"), "input.messages")
        return prompt, _side(c, record.get("preferred_output"), "preferred_output"), \
            _side(c, record.get("non_preferred_output"), "non_preferred_output")
    if record.get("prompt") is None and isinstance(record.get("chosen"), list):
        return _split_implicit(c, record.get("chosen"), record.get("rejected"))
    return _prompt(c, record.get("prompt")), _side(c, record.get("chosen"), "chosen"), \
        _side(c, record.get("rejected"), "rejected")


def to_pair(record: Any, source: str, line: int) -> tuple[PairExample | None, list[Problem]]:
    """One preference record as a `PairExample` (None when it has any problem), with every problem."""
    c = _Collector(source, line)
    if not isinstance(record, dict):
        c.add("wrong_type", f"a record must be a JSON object, got {_type_name(record)}")
        return None, c.problems
    parts = _pair_parts(c, record)
    margin = record.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        c.add("wrong_type", f"'margin' must be a number, got {_type_name(margin)}")
    if c.problems or parts is None or None in parts:
        return None, c.problems or [Problem(source, line, "not a preference pair", kind="unknown_format")]
    prompt, chosen, rejected = parts
    if [m.content.strip() for m in chosen] == [m.content.strip() for m in rejected]:
        c.add("identical_pair", "chosen and rejected are the same answer: the pair teaches nothing")
        return None, c.problems
    return PairExample(source, line, prompt, chosen, rejected, None if margin is None else float(margin)), []


def to_feedback(record: Any, source: str, line: int) -> tuple[FeedbackExample | None, list[Problem]]:
    """One KTO record: prompt, completion and a true/false `label`."""
    c = _Collector(source, line)
    if not isinstance(record, dict):
        c.add("wrong_type", f"a record must be a JSON object, got {_type_name(record)}")
        return None, c.problems
    prompt, completion = _prompt(c, record.get("prompt")), _side(c, record.get("completion"), "completion")
    label = record.get("label")
    if not isinstance(label, bool):
        c.add("missing_key" if label is None else "wrong_type",
              "missing 'label' (true for a desirable answer, false for an undesirable one)" if label is None
              else f"'label' must be true or false, got {_type_name(label)}")
    if c.problems:
        return None, c.problems
    return FeedbackExample(source, line, prompt, completion, label), []


def to_prompt(record: Any, source: str, line: int) -> tuple[PromptExample | None, list[Problem]]:
    """One RL record: a prompt (string or messages ending on a user turn) and its other fields."""
    c = _Collector(source, line)
    if not isinstance(record, dict):
        c.add("wrong_type", f"a record must be a JSON object, got {_type_name(record)}")
        return None, c.problems
    key = "messages" if record.get("prompt") is None and record.get("messages") is not None else "prompt"
    prompt = _prompt(c, record.get(key), key)
    if c.problems:
        return None, c.problems
    fields = {k: v for k, v in record.items() if k != key}
    return PromptExample(source, line, prompt, fields), []


CONVERTERS = {"pairs": to_pair, "feedback": to_feedback, "prompts": to_prompt}


def load_records(paths: list[str], kind: str) -> tuple[list, list[Problem]]:
    """Every record of `paths` converted to `kind` ("pairs", "feedback" or "prompts"), and every problem."""
    convert = CONVERTERS[kind]
    examples, problems = [], []
    for path in paths:
        records, found = read_records(str(path))
        problems += found
        if not records and not found:
            problems.append(Problem(str(path), 0, "the file holds no records", kind="empty_file"))
        for line, record in records:
            example, more = convert(record, str(path), line)
            problems += more
            if example is not None:
                examples.append(example)
    return examples, problems


@dataclass
class PairRow:
    """A rendered pair: the prompt with each answer as token rows (the answer's tokens trained, with
    its end-of-turn token), an optional margin, and the reference log-probs once computed."""

    chosen: Rendered
    rejected: Rendered
    margin: float | None = None
    ref: tuple[float, float] | None = None  # reference log-probs (chosen, rejected), when precomputed

    @property
    def tokens(self) -> int:
        return len(self.chosen.ids) + len(self.rejected.ids)


def render_pair(pair: PairExample, tokenizer, max_length: int) -> PairRow:
    """Both sides rendered with the model's chat template; only the answer after the prompt is trained."""
    sides = [render_example(pair.conversation(side), tokenizer, "last", max_length)
             for side in ("chosen", "rejected")]
    return PairRow(sides[0], sides[1], pair.margin)


def forged_turns(tokenizer, conversations: list[Example], allowed: bool) -> list[Problem]:
    """Control tokens of the template spelled inside content: an error unless `allowed`
    (data.allow_special_tokens; then a warning, and they are read as plain text), as for SFT records."""
    from tunery.data.control_tokens import ControlTokens, control_token_problems

    controls = ControlTokens.of(tokenizer)
    return [p for e in conversations for p in control_token_problems(e, controls, allowed=allowed)]


def split_examples(examples: list, share: float, seed: int) -> tuple[list, list]:
    """The seeded validation hold-out of `data.val_split`, for any kind of example."""
    from tunery.data.dataset import split_validation

    return split_validation(examples, share, seed)


def build_pair_datasets(cfg, tokenizer) -> Datasets:
    """Training and validation pairs for a preference config, every bad record listed in one error."""
    data = cfg.data
    train, problems = load_records(data.train, "pairs")
    val, found = load_records(data.validation, "pairs")
    sides = [e.conversation(side) for e in train + val for side in ("chosen", "rejected")]
    raise_if_errors(problems + found + forged_turns(tokenizer, sides, data.allow_special_tokens))
    warnings = []
    if not data.validation and data.val_split > 0:
        train, val = split_examples(train, data.val_split, cfg.training.seed)
    rows = {}
    for name, examples in (("train", train), ("val", val)):
        rows[name], more = _render_all(examples, lambda i, ex=examples: render_pair(ex[i], tokenizer, data.max_length),
                                       lambda e: e.location, data.max_length)
        warnings += more
    if not rows["train"]:
        raise TuneryError("no preference pair is left to train on", fix="check data.train and data.max_length")
    return Datasets(rows["train"], rows["val"], warnings, [e.conversation("chosen") for e in val])


@dataclass
class FeedbackRow:
    """A rendered KTO example: prompt + completion, and the same completion after the NEXT example's
    prompt (the mismatched pair whose log-ratio estimates KTO's reference point), with its label."""

    answer: Rendered
    mismatched: Rendered
    desirable: bool
    ref: tuple[float, float] | None = None  # reference log-probs (answer, mismatched), when precomputed

    @property
    def tokens(self) -> int:
        return len(self.answer.ids) + len(self.mismatched.ids)


def _render_all(examples: list, render, location, max_length: int) -> tuple[list, list[str]]:
    rows, warnings = [], []
    for i, example in enumerate(examples):
        row = render(i)
        sides = [side for side in vars(row).values() if isinstance(side, Rendered)]
        if not all(side.num_trained for side in sides):
            warnings.append(f"{location(example)}: dropped: an answer lies wholly beyond max_length {max_length}")
            continue
        if any(side.answer_cut for side in sides):
            warnings.append(f"{location(example)}: cut at max_length {max_length}: part of an answer is lost")
        rows.append(row)
    return rows, warnings


def build_feedback_datasets(cfg, tokenizer) -> Datasets:
    """Training and validation examples of a KTO config (prompt, completion, label)."""
    data = cfg.data
    train, problems = load_records(data.train, "feedback")
    val, found = load_records(data.validation, "feedback")
    raise_if_errors(problems + found + forged_turns(tokenizer, [e.conversation() for e in train + val],
                                                   data.allow_special_tokens))
    if not data.validation and data.val_split > 0:
        train, val = split_examples(train, data.val_split, cfg.training.seed)
    out, warnings = {}, []
    for name, examples in (("train", train), ("val", val)):
        def render(i, examples=examples):
            e, other = examples[i], examples[(i + 1) % len(examples)]
            mismatched = Example(e.source, e.line, messages=other.prompt + e.completion)
            return FeedbackRow(render_example(e.conversation(), tokenizer, "last", data.max_length),
                               render_example(mismatched, tokenizer, "last", data.max_length), e.desirable)
        out[name], more = _render_all(examples, render, lambda e: e.location, data.max_length)
        warnings += more
    if not out["train"]:
        raise TuneryError("no example is left to train on", fix="check data.train and data.max_length")
    if len({row.desirable for row in out["train"]}) < 2:
        warnings.append("every training example has the same label: KTO learns most from both kinds")
    val_examples = [e.conversation() for e in val if e.desirable]
    return Datasets(out["train"], out["val"], warnings, val_examples)
