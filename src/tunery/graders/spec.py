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
``length_range:MIN-MAX[:chars]``  MIN to MAX words (or characters) long
``python:T:F``     the user's function F in module or file T: F(completion, record) -> [0, 1]
``code_tests[:S]`` the completion passes the record's ``tests`` in the sandbox within S seconds
``reward_model:R`` sigmoid of reward run R's reward of the answer given its prompt (graders/reward_model.py)
=================  =======================================================================

A weighted sum of specs is one grader: ``0.7*exact+0.3*json``, or the list
``[{"type": "exact", "weight": 0.7}, {"type": "json", "weight": 0.3}]`` (see `tunery.graders.combine`).
In a data file a record may carry its own list, e.g. ``"graders": ["contains:Paris"]`` or
``[{"type": "contains", "value": "Paris"}]``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from tunery.errors import TuneryError
from tunery.graders import checks, reward_model
from tunery.graders.base import GraderFailed, score_each
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


TERM_START = re.compile(r"^\s*[\d.]+\s*\*")  # a weighted sum: its first term starts with WEIGHT*
LENGTH_RANGE = re.compile(r"^(\d+)-(\d+)(?::(words|chars))?$")


def _prep_length(kind: str, arg: str | None) -> tuple[int, int, str]:
    match = LENGTH_RANGE.match(arg or "")
    if not match or int(match.group(1)) > int(match.group(2)):
        raise TuneryError(f"grader 'length_range' needs MIN-MAX with MIN <= MAX, then :chars to count "
                          f"characters instead of words (got {arg!r})",
                          fix="e.g. length_range:5-50 or length_range:20-400:chars")
    return int(match.group(1)), int(match.group(2)), match.group(3) or "words"


def _prep_python(kind: str, arg: str | None):
    from tunery.graders.python_fn import PythonFunction

    return PythonFunction(arg)


def _prep_code_tests(kind: str, arg: str | None):
    from tunery.graders.code_tests import CodeTests

    return CodeTests(arg)


@dataclass(frozen=True)
class Kind:
    """A grader kind: how its argument is prepared, how it scores, whether it needs a reference, and
    which record fields it reads.

    With ``delegate`` the prepared argument is itself a scorer (``score(prediction, reference, record)``
    and ``score_many``, see `tunery.graders.base`): kinds that run the user's code, programs or a model.
    """

    prepare: Callable[[str, str | None], Any]
    score: Callable[[str, str | None, Any], float] | None
    needs_reference: bool
    delegate: bool = False
    reads: tuple[str, ...] = ()


KINDS: dict[str, Kind] = {
    "exact": Kind(_prep_none, checks.exact, True),
    "numeric": Kind(_prep_tolerance, checks.numeric, True),
    "regex": Kind(_prep_regex, checks.regex, False),
    "json": Kind(_prep_none, checks.json_valid, False),
    "json_match": Kind(_prep_none, checks.json_match, True),
    "json_schema": Kind(_prep_schema, checks.json_schema, False),
    "contains": Kind(lambda kind, arg: arg or None, checks.contains, False),
    "max_words": Kind(_prep_words, checks.max_words, False),
    "length_range": Kind(_prep_length, checks.length_range, False),
    "python": Kind(_prep_python, None, False, delegate=True),
    "code_tests": Kind(_prep_code_tests, None, False, delegate=True, reads=("tests",)),
    "reward_model": Kind(reward_model.prepare, None, False, delegate=True),
}


@dataclass(frozen=True)
class Grader:
    """A parsed spec: `score(prediction, reference, record)` gives a number in [0, 1]."""

    kind: str
    arg: str | None
    label: str
    param: Any = field(compare=False, repr=False)

    @property
    def spec(self) -> str:
        """The spec string this grader was parsed from."""
        return self.kind if self.arg is None else f"{self.kind}:{self.arg}"

    @property
    def reads(self) -> tuple[str, ...]:
        """Record fields this grader needs (``tests`` for code_tests)."""
        return KINDS[self.kind].reads

    def score(self, prediction: str, reference: str | None = None, record: Mapping[str, Any] | None = None) -> float:
        """The score of one answer; 0 when the grader needs a reference and there is none. Raises
        `GraderFailed` when this record cannot be scored (see `uses.Failures`)."""
        kind = KINDS[self.kind]
        if kind.needs_reference and reference is None:
            return 0.0
        if kind.delegate:
            return self.param.score(prediction, reference, record)
        return kind.score(prediction, reference, self.param)

    def score_many(self, predictions, references, records) -> list[float | GraderFailed]:
        """`score` for a batch; kinds that run programs or models do it in one go."""
        if KINDS[self.kind].delegate and hasattr(self.param, "score_many"):
            return self.param.score_many(predictions, references, records)
        return score_each(self, predictions, references, records)


def _label(kind: str, arg: str | None) -> str:
    if kind == "python" and arg is not None and len(arg) > 24:  # a long path: the function names it
        return f"python:{arg.rpartition(':')[2][:24]}"
    if arg is None or kind in ("json_schema", "regex") and len(arg) > 24:
        return kind
    return f"{kind}:{arg}" if len(arg) <= 24 else f"{kind}:{arg[:21]}..."


def parse_grader(spec: str | dict | list):
    """A grader from ``"KIND"``, ``"KIND:ARG"``, ``{"type": KIND, "value": ARG}``, or a weighted sum
    (``"0.7*exact+0.3*json"``, or a list of ``{"type", "value", "weight"}``): a `Grader` or a
    `combine.WeightedSum`."""
    from tunery.graders import combine

    if isinstance(spec, list) or isinstance(spec, str) and combine.is_weighted(spec):
        return combine.parse_weighted(spec, parse_single)
    return parse_single(spec)


def parse_single(spec: str | dict) -> Grader:
    """A `Grader` from one spec (no weighted sum)."""
    if isinstance(spec, dict):
        unknown = set(spec) - {"type", "value"}
        if "weight" in unknown:
            raise TuneryError(f"grader {json.dumps(spec)}: a weight belongs to a term of a weighted sum",
                              fix="write the terms as one list, [[{type: exact, weight: 0.7}, {type: json, "
                                  "weight: 0.3}]] in a graders list, or the string '0.7*exact+0.3*json'")
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
        raise TuneryError(f"a grader spec must be a string, an object or a list (a weighted sum), not "
                          f"{type(spec).__name__}")
    if kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(kind, list(KINDS), n=1)
        hint = " (each term of a weighted sum needs its weight: 0.5*exact+0.5*json)" if "+" in kind else ""
        raise TuneryError(f"unknown grader '{kind}'" + (f": did you mean {close[0]}?" if close else "") + hint,
                          fix=f"use one of {', '.join(KINDS)}")
    return Grader(kind, arg, _label(kind, arg), KINDS[kind].prepare(kind, arg))


def parse_graders(specs: list[str | dict | list]) -> list:
    """Parse a list of specs; labels are made unique (``contains:a``, ``contains:a#2``)."""
    graders = []
    seen: dict[str, int] = {}
    for spec in specs:
        g = parse_grader(spec)
        seen[g.label] = seen.get(g.label, 0) + 1
        if seen[g.label] > 1:
            g = replace(g, label=f"{g.label}#{seen[g.label]}")
        graders.append(g)
    return graders


def split_spec_list(text: str) -> list[str]:
    """``"exact,json"`` -> ``["exact", "json"]`` for the command line; a spec that itself holds a comma
    (a regex, an inline schema, or a weighted sum with one of them) must be given with its own --graders
    option."""
    free_text = ("regex:", "json_schema:", "contains:")
    if text.lstrip().startswith(free_text) or TERM_START.match(text) and any(k in text for k in free_text):
        return [text.strip()]
    return [part.strip() for part in text.split(",") if part.strip()]
