"""Grader specs: one short string (or a small dict) that names how an answer is scored.

The same spec serves three uses: an evaluation metric (`tunery eval --graders ...`), a reward for
reinforcement learning (`reward`), and a release gate (`gate`). Written as ``KIND`` or ``KIND:ARG``:

=================  =======================================================================
``exact``          equal to the reference after trimming the ends
``numeric[:TOL]``  the last number equals the reference's last number (absolute tolerance TOL)
``regex:PATTERN``  PATTERN (Python syntax) is found in the answer; anchor with ^...$
``json``           the answer is one JSON value and nothing else
``json_match``     answer and reference parse to the same JSON value (key order ignored)
``json_schema:S``  the answer is JSON valid against schema S (inline JSON, or a file path)
``contains[:TEXT]`` TEXT (default: the reference) occurs in the answer, ignoring case
``max_words:N``    the answer has between 1 and N words
``reward_model:R`` sigmoid of reward run R's reward of the answer given its prompt (graders/reward_model.py)
=================  =======================================================================

In a data file a record may carry its own list, e.g. ``"graders": ["contains:Paris"]`` or
``[{"type": "contains", "value": "Paris"}]``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunery.errors import TuneryError
from tunery.graders import checks, reward_model
from tunery.graders.schema import compile_schema


def _no_arg(kind: str, arg: str | None) -> None:
    if arg is not None:
        raise TuneryError(f"grader '{kind}' takes no argument (got '{kind}:{arg}')", fix=f"write '{kind}'")


def _prep_none(kind: str, arg: str | None) -> None:
    _no_arg(kind, arg)


def _prep_tolerance(kind: str, arg: str | None) -> float:
    if arg is None:
        return 0.0
    try:
        value = float(arg)
    except ValueError:
        value = -1.0
    if value < 0:
        raise TuneryError(f"grader '{kind}:{arg}': the tolerance must be a number >= 0",
                          fix="e.g. numeric:0.01")
    return value


def _prep_regex(kind: str, arg: str | None) -> re.Pattern:
    if not arg:
        raise TuneryError("grader 'regex' needs a pattern", fix="e.g. regex:^[A-D]$")
    try:
        return re.compile(arg)
    except re.error as exc:
        raise TuneryError(f"grader 'regex:{arg}': invalid pattern", why=str(exc)) from exc


def _prep_schema(kind: str, arg: str | None):
    if not arg:
        raise TuneryError("grader 'json_schema' needs a schema",
                          fix='inline: json_schema:{"type": "object", "required": ["name"]}, or a file path')
    text = arg
    if not arg.lstrip().startswith("{"):
        path = Path(arg).expanduser()
        if not path.is_file():
            raise TuneryError(f"grader 'json_schema': schema file not found: {arg}")
        text = path.read_text(encoding="utf-8")
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TuneryError(f"grader 'json_schema': the schema is not valid JSON ({exc.msg})") from exc
    return compile_schema(schema)


def _prep_words(kind: str, arg: str | None) -> int:
    if arg is None or not arg.isdigit() or int(arg) < 1:
        raise TuneryError(f"grader 'max_words' needs a positive whole number (got {arg!r})", fix="e.g. max_words:5")
    return int(arg)


@dataclass(frozen=True)
class Kind:
    """A grader kind: how its argument is prepared, how it scores, and whether it needs a reference."""

    prepare: Callable[[str, str | None], Any]
    score: Callable[[str, str | None, Any], float]
    needs_reference: bool


KINDS: dict[str, Kind] = {
    "exact": Kind(_prep_none, checks.exact, True),
    "numeric": Kind(_prep_tolerance, checks.numeric, True),
    "regex": Kind(_prep_regex, checks.regex, False),
    "json": Kind(_prep_none, checks.json_valid, False),
    "json_match": Kind(_prep_none, checks.json_match, True),
    "json_schema": Kind(_prep_schema, checks.json_schema, False),
    "contains": Kind(lambda kind, arg: arg or None, checks.contains, False),
    "max_words": Kind(_prep_words, checks.max_words, False),
    "reward_model": Kind(reward_model.prepare, reward_model.score_answer, False),
}


@dataclass(frozen=True)
class Grader:
    """A parsed spec: `score(prediction, reference)` gives a number in [0, 1]."""

    kind: str
    arg: str | None
    label: str
    param: Any = field(compare=False, repr=False)

    @property
    def spec(self) -> str:
        """The spec string this grader was parsed from."""
        return self.kind if self.arg is None else f"{self.kind}:{self.arg}"

    def score(self, prediction: str, reference: str | None = None) -> float:
        """The score of one answer; 0 when the grader needs a reference and there is none."""
        if KINDS[self.kind].needs_reference and reference is None:
            return 0.0
        return KINDS[self.kind].score(prediction, reference, self.param)


def _label(kind: str, arg: str | None) -> str:
    if arg is None or kind in ("json_schema", "regex") and len(arg) > 24:
        return kind
    return f"{kind}:{arg}" if len(arg) <= 24 else f"{kind}:{arg[:21]}..."


def parse_grader(spec: str | dict) -> Grader:
    """A `Grader` from ``"KIND"``, ``"KIND:ARG"`` or ``{"type": KIND, "value": ARG}``."""
    if isinstance(spec, dict):
        unknown = set(spec) - {"type", "value"}
        if "type" not in spec or unknown:
            raise TuneryError(f"grader {json.dumps(spec)} must have 'type' and optionally 'value' only")
        value = spec.get("value")
        if isinstance(value, (dict, list)):
            value = json.dumps(value)  # an inline schema written as an object
        kind, arg = str(spec["type"]), (None if value is None else str(value))
    elif isinstance(spec, str):
        kind, sep, rest = spec.strip().partition(":")
        arg = rest if sep else None
    else:
        raise TuneryError(f"a grader spec must be a string or an object, not {type(spec).__name__}")
    if kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(kind, list(KINDS), n=1)
        raise TuneryError(f"unknown grader '{kind}'" + (f": did you mean {close[0]}?" if close else ""),
                          fix=f"use one of {', '.join(KINDS)}")
    return Grader(kind, arg, _label(kind, arg), KINDS[kind].prepare(kind, arg))


def parse_graders(specs: list[str | dict]) -> list[Grader]:
    """Parse a list of specs; labels are made unique (``contains:a``, ``contains:a#2``)."""
    graders: list[Grader] = []
    seen: dict[str, int] = {}
    for spec in specs:
        g = parse_grader(spec)
        seen[g.label] = seen.get(g.label, 0) + 1
        if seen[g.label] > 1:
            g = Grader(g.kind, g.arg, f"{g.label}#{seen[g.label]}", g.param)
        graders.append(g)
    return graders


def split_spec_list(text: str) -> list[str]:
    """``"exact,json"`` -> ``["exact", "json"]`` for the command line; a spec that itself holds a comma
    (a regex, an inline schema) must be given with its own --graders option."""
    if text.lstrip().startswith(("regex:", "json_schema:", "contains:")):
        return [text.strip()]
    return [part.strip() for part in text.split(",") if part.strip()]
