"""What every grader is, and how a grader says that it could not score one record.

A grader is any object with a ``label`` and ``score(prediction, reference=None, record=None) -> float``
in [0, 1]. ``record`` is the data record the prediction answers, as read from its file (every field:
``messages``, ``answer``, ``tests`` ...); graders that need none of it ignore it. A grader may add
``score_many(predictions, references, records)`` when scoring a batch at once is cheaper (programs run in
parallel, one forward pass of a reward model); `tunery.graders.uses.score_batch` uses it when present.

The built-in kinds are `tunery.graders.spec.Grader` (one spec) and `tunery.graders.combine.WeightedSum`.
A kind that needs a loaded model (a reward model read from a run folder, say) prepares an object with
these two methods in its `Kind.prepare` and is marked ``delegate=True`` in `spec.KINDS`: the spec
machinery (labels, YAML, weighted sums, the three uses) then works for it unchanged. Such a kind should
load its model on the first score, not in `prepare`: specs are also parsed to validate a config.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from tunery.errors import TuneryError


class GraderFailed(TuneryError):
    """A grader could not score one record (the user's function raised, a record lacks a field the
    grader reads). The record scores 0 and the failure is reported, see `uses.Failures`."""


@runtime_checkable
class Scorer(Protocol):
    """The interface every grader object offers."""

    label: str

    def score(self, prediction: str, reference: str | None = None, record: Mapping[str, Any] | None = None) -> float:
        """A number in [0, 1]; raises `GraderFailed` when this record cannot be scored."""


def score_each(scorer: Scorer, predictions: Sequence[str], references: Sequence[str | None],
               records: Sequence[Mapping[str, Any] | None]) -> list[float | GraderFailed]:
    """`score` on each item in turn: the default `score_many` (a failure is kept in its item's place)."""
    results: list[float | GraderFailed] = []
    for prediction, reference, record in zip(predictions, references, records):
        try:
            results.append(scorer.score(prediction, reference, record))
        except GraderFailed as failed:
            results.append(failed)
    return results
