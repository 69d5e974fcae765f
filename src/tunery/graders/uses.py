"""The three uses of one grader spec: a metric per example, a reward, and a release gate.

Every use goes through `score_batch` (or `score_all` for one answer), which turns a grader's failure on
one record (`GraderFailed`) into a score of 0 and a report in `Failures`, so that one bad record or a
bug in a user's function costs that record, not a whole evaluation or training run.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from tunery.errors import TuneryError
from tunery.graders.base import GraderFailed


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Failures:
    """Graders that could not score some records. The first failure of each grader is logged with the
    record's location; later ones are only counted (a broken function would otherwise print a line
    per record). `to_json` goes into eval.json."""

    log: Callable[[str], None] = _stderr
    by_label: dict[str, dict] = field(default_factory=dict)

    def add(self, label: str, where: str | None, failed: GraderFailed) -> None:
        seen = self.by_label.get(label)
        if seen is None:
            first = f"{where}: {failed.what}" if where else failed.what
            self.by_label[label] = {"count": 1, "first": first}
            self.log(f"warning: grader {label} failed on {where or 'a record'} ({failed.what}); that record "
                     "scores 0, further failures of this grader are counted, not printed")
        else:
            seen["count"] += 1

    def to_json(self) -> dict[str, dict]:
        return {label: dict(info) for label, info in self.by_label.items()}


PROCESS_FAILURES = Failures()  # used when a caller passes none: each grader's first failure is logged once


def score_batch(grader, predictions: Sequence[str], references: Sequence[str | None] | None = None,
                records: Sequence[Mapping[str, Any] | None] | None = None, where: Sequence[str | None] | None = None,
                failures: Failures | None = None) -> list[float]:
    """One grader's score of each prediction (a failure scores 0 and goes to `failures`)."""
    n = len(predictions)
    references = list(references) if references is not None else [None] * n
    records = list(records) if records is not None else [None] * n
    failures = failures if failures is not None else PROCESS_FAILURES
    scores = []
    for i, result in enumerate(grader.score_many(list(predictions), references, records)):
        if isinstance(result, GraderFailed):
            failures.add(grader.label, where[i] if where else None, result)
            result = 0.0
        scores.append(result)
    return scores


def score_all(graders: list, prediction: str, reference: str | None = None, record: Mapping[str, Any] | None = None,
              where: str | None = None, failures: Failures | None = None) -> dict[str, float]:
    """{label: score} of one answer under every grader (the evaluation metric)."""
    return {g.label: score_batch(g, [prediction], [reference], [record], [where], failures)[0] for g in graders}


def reward(graders: list, prediction: str, reference: str | None = None, weights: dict[str, float] | None = None,
           record: Mapping[str, Any] | None = None, failures: Failures | None = None) -> float:
    """A scalar reward in [0, 1]: the weighted mean of the graders' scores (equal weights by default).

    Weights are keyed by label; a grader missing from `weights` counts with weight 0. (A weighted-sum
    grader, ``0.7*exact+0.3*json``, is the same thing as one spec.)
    """
    scores = score_all(graders, prediction, reference, record, failures=failures)
    use = weights if weights is not None else {label: 1.0 for label in scores}
    unknown = set(use) - set(scores)
    if unknown:
        raise TuneryError(f"reward weights name unknown graders: {', '.join(sorted(unknown))}",
                          fix=f"use labels among: {', '.join(scores)}")
    total = sum(use.values())
    if total <= 0:
        raise TuneryError("reward weights must add up to more than 0")
    return sum(scores[label] * w for label, w in use.items()) / total


def rewards(grader, completions: Sequence[str], references: Sequence[str | None] | None = None,
            records: Sequence[Mapping[str, Any] | None] | None = None, failures: Failures | None = None) -> list[float]:
    """The reward of each completion of an RL batch under one grader (a spec, possibly a weighted sum):
    `score_batch`, so programs run in parallel and a failing record rewards 0."""
    return score_batch(grader, completions, references, records, failures=failures)


def gate(means: dict[str, float], thresholds: dict[str, float]) -> tuple[bool, list[str]]:
    """Release gate: (passed, reasons) where each reason names a grader below its threshold.

    `means` are aggregated scores (e.g. from `tunery eval`); a threshold on a grader that was not
    scored fails the gate rather than passing silently.
    """
    failures = []
    for label, bar in thresholds.items():
        got = means.get(label)
        if got is None:
            failures.append(f"{label}: not scored")
        elif got < bar:
            failures.append(f"{label}: {got:.3f} < {bar:.3f}")
    return not failures, failures


GATE = re.compile(r"^\s*(?P<label>.+?)\s*>=\s*(?P<bar>[-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*(?P<pct>%?)\s*$")


def parse_gate(text: str) -> tuple[str, float]:
    """``"exact>=0.8"`` (or ``"exact>=80%"``) -> ("exact", 0.8)."""
    match = GATE.match(text)
    bar = float(match.group("bar")) / (100 if match.group("pct") else 1) if match else -1.0
    if not match or not 0.0 <= bar <= 1.0:
        raise TuneryError(f"gate '{text}' is not LABEL>=NUMBER with a number from 0 to 1 (or a percentage)",
                          fix='e.g. --gate "exact>=0.8" or --gate "json_match>=95%"')
    return match.group("label"), bar
