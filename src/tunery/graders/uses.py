"""The three uses of one grader spec: a metric per example, a reward, and a release gate."""

from __future__ import annotations

from tunery.errors import TuneryError
from tunery.graders.spec import Grader


def score_all(graders: list[Grader], prediction: str, reference: str | None) -> dict[str, float]:
    """{label: score} of one answer under every grader (the evaluation metric)."""
    return {g.label: g.score(prediction, reference) for g in graders}


def reward(
    graders: list[Grader], prediction: str, reference: str | None, weights: dict[str, float] | None = None
) -> float:
    """A scalar reward in [0, 1]: the weighted mean of the graders' scores (equal weights by default).

    Weights are keyed by label; a grader missing from `weights` counts with weight 0.
    """
    scores = score_all(graders, prediction, reference)
    use = weights if weights is not None else {label: 1.0 for label in scores}
    unknown = set(use) - set(scores)
    if unknown:
        raise TuneryError(f"reward weights name unknown graders: {', '.join(sorted(unknown))}",
                          fix=f"use labels among: {', '.join(scores)}")
    total = sum(use.values())
    if total <= 0:
        raise TuneryError("reward weights must add up to more than 0")
    return sum(scores[label] * w for label, w in use.items()) / total


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
