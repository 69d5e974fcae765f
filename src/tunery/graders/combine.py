"""Weighted sums of graders: one grader whose score is the weighted mean of its terms' scores.

Written as a string, ``0.7*exact+0.3*json`` (every term starts with ``WEIGHT*``; the string is split at
each ``+`` that is followed by ``WEIGHT*``, so a regex holding ``+0.5*`` needs the list form), or as a
list (YAML or JSON) of terms ``{type: exact, weight: 0.7}`` / ``{type: contains, value: Paris,
weight: 0.3}`` or strings ``"0.7*exact"``. Weights are positive numbers; they need not add up to 1 (the
score is divided by their sum). The label reads like the string form.

When a term cannot score a record (`GraderFailed`: the user's function raised, the record has no tests)
the whole sum fails on that record: it scores 0 there and the failure is reported, as for one grader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from tunery.errors import TuneryError
from tunery.graders.base import GraderFailed

WEIGHT = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
TERM = re.compile(rf"^\s*(?P<weight>{WEIGHT})\s*\*\s*(?P<spec>.+?)\s*$", re.DOTALL)
SPLIT = re.compile(rf"\+(?=\s*{WEIGHT}\s*\*)")


def is_weighted(text: str) -> bool:
    """Whether a spec string is a weighted sum (it starts with ``WEIGHT*``)."""
    return TERM.match(text) is not None


@dataclass(frozen=True)
class WeightedSum:
    """Terms (weight, grader) scored as one grader: sum(weight * score) / sum(weight)."""

    terms: tuple[tuple[float, Any], ...]
    label: str

    kind = "sum"

    @property
    def spec(self) -> str:
        return "+".join(f"{w:g}*{g.spec}" for w, g in self.terms)

    @property
    def reads(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for _, g in self.terms for f in g.reads))

    def score(self, prediction: str, reference: str | None = None, record: Mapping[str, Any] | None = None) -> float:
        total = sum(w for w, _ in self.terms)
        return sum(w * g.score(prediction, reference, record) for w, g in self.terms) / total

    def score_many(self, predictions, references, records) -> list[float | GraderFailed]:
        """Each term scores the whole batch (code_tests runs its programs in parallel), then per item."""
        per_term = [g.score_many(predictions, references, records) for _, g in self.terms]
        total = sum(w for w, _ in self.terms)
        results: list[float | GraderFailed] = []
        for scores in zip(*per_term):
            failed = next((s for s in scores if isinstance(s, GraderFailed)), None)
            results.append(failed if failed is not None else
                           sum(w * s for (w, _), s in zip(self.terms, scores)) / total)
        return results


def _weight(text: Any, where: str) -> float:
    try:
        weight = float(text)
    except (TypeError, ValueError):
        weight = -1.0
    if not weight > 0 or weight == float("inf"):
        raise TuneryError(f"weighted grader term {where}: the weight must be a number above 0 (got {text!r})",
                          fix="e.g. 0.7*exact+0.3*json")
    return weight


def _term(item: Any, parse_single: Callable) -> tuple[float, Any]:
    if isinstance(item, str):
        match = TERM.match(item)
        if not match:
            raise TuneryError(f"weighted grader term '{item}' needs a weight",
                              fix="write it as WEIGHT*SPEC, e.g. 0.3*json")
        return _weight(match.group("weight"), f"'{item}'"), parse_single(match.group("spec"))
    if isinstance(item, dict):
        if "weight" not in item:
            raise TuneryError(f"weighted grader term {item} needs a 'weight'", fix="e.g. {type: json, weight: 0.3}")
        rest = {k: v for k, v in item.items() if k != "weight"}
        return _weight(item["weight"], str(item)), parse_single(rest)
    raise TuneryError(f"a weighted grader term must be 'WEIGHT*SPEC' or {{type, value, weight}}, not "
                      f"{type(item).__name__} (sums do not nest)")


def parse_weighted(spec: str | list, parse_single: Callable) -> WeightedSum:
    """A `WeightedSum` from its string or list form; `parse_single` parses each term's spec."""
    items = [part for part in SPLIT.split(spec)] if isinstance(spec, str) else list(spec)
    if not items:
        raise TuneryError("a weighted grader needs at least one term", fix="e.g. [{type: exact, weight: 1}]")
    terms = tuple(_term(item, parse_single) for item in items)
    label = "+".join(f"{w:g}*{g.label}" for w, g in terms)
    return WeightedSum(terms, label)
