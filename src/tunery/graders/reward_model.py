"""`reward_model:RUN`: a reward model trained with tunery (`method: reward`) as a grader.

The score of an answer is `sigmoid(r)`, where `r` is the run's reward of the answer given its prompt
(the conversation before it, read from the record), in (0, 1): 0.5 is a reward of 0, and the Bradley-
Terry model the reward was trained with reads `sigmoid(r_a - r_b)` as the chance that answer a is
preferred to answer b.

This layer only names the run and checks its run.json: loading the model and reading prompts need the
data pipeline and the model code, which sit above the graders. `tunery.trainers.reward_grader` does
that and installs itself here with `install` when imported, as every command that scores graders does
(training through the method registry, `tunery eval` directly). A spec is also parsed only to validate
a config, which must not load anything: the model is loaded on the first score and kept by the grader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tunery.errors import TuneryError

# (grader, predictions, records) -> scores; installed by tunery.trainers.reward_grader
Scorer = Callable[["RewardModelGrader", Sequence[str], Sequence[Mapping[str, Any] | None]], list[float]]
_scorer: Scorer | None = None


def install(scorer: Scorer) -> None:
    """Set the function that loads a reward run and scores answers with it."""
    global _scorer
    _scorer = scorer


class RewardModelGrader:
    """Scores answers with a reward run; `score` / `score_many` take the record for the prompt."""

    def __init__(self, run: str):
        path = Path(run).expanduser()
        info_file = path / "run.json"
        if not info_file.is_file():
            raise TuneryError(f"grader 'reward_model:{run}': {run} is not a run folder (no run.json)",
                              fix="name the folder of a run trained with method: reward, e.g. reward_model:runs/rm")
        try:
            method = json.loads(info_file.read_text(encoding="utf-8")).get("method", "sft")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise TuneryError(f"grader 'reward_model:{run}': {info_file} is not a run's JSON record") from exc
        if method != "reward":
            raise TuneryError(f"grader 'reward_model:{run}': the run was trained with method: {method}",
                              why="only a reward model (method: reward) gives a reward per answer",
                              fix="train one with method: reward on preference pairs, and name its run folder")
        self.run = path
        self.loaded: Any = None  # what the scorer loads on the first score (model, tokenizer), kept

    def score(self, prediction: str, reference: str | None = None, record: Mapping[str, Any] | None = None) -> float:
        """sigmoid(reward) of one answer given the prompt of `record`."""
        return self.score_many([prediction], [reference], [record])[0]

    def score_many(self, predictions: Sequence[str], references: Sequence[str | None],
                   records: Sequence[Mapping[str, Any] | None]) -> list[float]:
        """sigmoid(reward) of each answer given the prompt of its record."""
        if _scorer is None:
            raise TuneryError(f"grader reward_model:{self.run} has no model scorer installed",
                              why="tunery.trainers.reward_grader was not imported by the caller",
                              fix="score reward_model graders through tunery eval or training, or import "
                                  "tunery.trainers.reward_grader first")
        return _scorer(self, predictions, records)


def prepare(kind: str, arg: str | None) -> RewardModelGrader:
    """The grader object of `reward_model:RUN` (checks the run now, loads the model on the first score)."""
    if not arg:
        raise TuneryError("grader 'reward_model' needs a run folder", fix="e.g. reward_model:runs/rm")
    return RewardModelGrader(arg)
