"""``code_tests[:SECONDS]``: run the completion against the record's unit tests, in the sandbox.

The program is the completion's code (its first fenced Python block when it has one, see `extract_code`)
followed by the record's ``tests`` field (a string, or a list of strings joined by newlines), run as one
module in `tunery.graders.sandbox` with a wall-clock limit of SECONDS (default 10). It scores 1 when the
program exits with code 0 within every limit, else 0: a failed assertion, an exception, a timeout, too
much output, a refused write or socket all score 0.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from tunery.errors import TuneryError
from tunery.graders import sandbox
from tunery.graders.base import GraderFailed

DEFAULT_SECONDS = 10.0
# A fence opens with ``` (or more) and an optional language; an answer cut off by the token limit may
# never close it, so the block then runs to the end of the text.
FENCE = re.compile(r"^(?P<fence>`{3,})[ \t]*(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)(?:^(?P=fence)[ \t]*$|\Z)",
                   re.MULTILINE | re.DOTALL)
PYTHON_TAGS = {"python", "py", "python3", "py3"}


def extract_code(completion: str) -> str:
    """The first fenced block tagged python (py, python3); else the first untagged block; else the
    whole completion."""
    blocks = [(m.group("lang").lower(), m.group("body")) for m in FENCE.finditer(completion)]
    for wanted in (lambda lang: lang in PYTHON_TAGS, lambda lang: lang == ""):
        found = next((body for lang, body in blocks if wanted(lang)), None)
        if found is not None:
            return found
    return completion


def tests_of(record: Mapping[str, Any] | None, label: str) -> str:
    """The record's ``tests`` as source text; GraderFailed when it has none."""
    tests = (record or {}).get("tests")
    if isinstance(tests, list) and all(isinstance(t, str) for t in tests):
        tests = "\n".join(tests)
    if not isinstance(tests, str) or not tests.strip():
        raise GraderFailed(f"{label}: the record has no 'tests' field (a string or a list of strings of Python)")
    return tests


def program(completion: str, tests: str) -> str:
    """What runs: the code, then the tests, as one module."""
    return extract_code(completion).rstrip() + "\n\n\n" + tests.rstrip() + "\n"


def parse_seconds(arg: str | None) -> float:
    if arg is None:
        return DEFAULT_SECONDS
    try:
        seconds = float(arg)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 600:
        raise TuneryError(f"grader 'code_tests:{arg}': the time limit must be a number of seconds in (0, 600]",
                          fix="e.g. code_tests:5")
    return seconds


def run_tests(completion: str, tests: str, limits: sandbox.Limits = sandbox.Limits()) -> sandbox.Outcome:
    """One completion against its tests, with the whole outcome (status, output, time): for a closer
    look at why an answer scored 0."""
    return sandbox.run_python(program(completion, tests), limits)


class CodeTests:
    """The prepared argument of a ``code_tests`` grader. The sandbox is probed on first use (a
    program that must pass), so a machine where it cannot run is an error rather than all zeros."""

    def __init__(self, arg: str | None, limits: sandbox.Limits | None = None):
        self.limits = limits or sandbox.Limits(seconds=parse_seconds(arg))
        self.label = "code_tests" if arg is None else f"code_tests:{arg}"

    def layers(self) -> dict:
        """Which isolation layers take effect here (probed once per process)."""
        return sandbox.probe(self.limits)

    def score(self, prediction: str, reference: str | None = None, record: Mapping[str, Any] | None = None) -> float:
        result = self.score_many([prediction], [reference], [record])[0]
        if isinstance(result, GraderFailed):
            raise result
        return result

    def score_many(self, predictions, references, records, workers: int | None = None) -> list[float | GraderFailed]:
        """Run every prediction with its record's tests, several at a time (up to the CPU count)."""
        self.layers()
        results: list[float | GraderFailed] = []
        runnable: list[tuple[int, str]] = []
        for i, (prediction, record) in enumerate(zip(predictions, records)):
            try:
                runnable.append((i, program(prediction, tests_of(record, self.label))))
                results.append(0.0)
            except GraderFailed as failed:
                results.append(failed)
        outcomes = sandbox.run_many([p for _, p in runnable], self.limits, workers)
        for (i, _), outcome in zip(runnable, outcomes):
            results[i] = float(outcome.passed)
        return results


def sandbox_layers(graders: list) -> dict | None:
    """The sandbox's layers ({layer: 'on' or why not}) when one of `graders` (or a term of a weighted
    sum) is code_tests; None when none runs code."""
    for grader in graders:
        for _, part in getattr(grader, "terms", None) or [(1.0, grader)]:
            if isinstance(getattr(part, "param", None), CodeTests):
                return part.param.layers()
    return None
