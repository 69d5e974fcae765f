"""Which trial runs next and whether a running one is pruned: a grid in order, or an Optuna study
(TPE sampler, median pruner) driven through its ask-and-tell interface.

The study lives in memory and is rebuilt from sweep.json when a sweep resumes: finished and pruned
trials are added back with their figures, unfinished ones are asked again with the same values
(enqueued), so the sampler and the pruner see everything the sweep measured. (A resumed search may then
propose other values than an uninterrupted one would have: the sampler's random state is not saved.)
"""

from __future__ import annotations

from tunery._deps import require
from tunery.config.schema import SweepParam, SweepSection
from tunery.sweep.space import distributions
from tunery.sweep.state import SweepState, Trial


class GridChooser:
    """Every point of the grid once, in order; no pruning (a grid asks for every combination)."""

    def __init__(self, state: SweepState):
        self.state = state
        if not state.trials:
            state.trials = [Trial(number, point) for number, point in enumerate(state.plan.space)]

    def next_trial(self) -> Trial | None:
        return next((t for t in self.state.trials if t.state == "pending"), None)

    def report(self, trial: Trial, step: int, value: float) -> bool:
        return False

    def end(self, trial: Trial) -> None:
        pass


class OptunaChooser:
    """`--search optuna`: new values from the sampler until `trials` have been asked for."""

    def __init__(self, state: SweepState, section: SweepSection):
        optuna = require("optuna", extra="sweep")
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own lines
        self.optuna, self.state, self.section = optuna, state, section
        self.params = [SweepParam(**p) for p in state.plan.space]
        self.dists = distributions(self.params)
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=section.startup_trials, n_warmup_steps=0)
                  if section.pruner == "median" else optuna.pruners.NopPruner())
        self.study = optuna.create_study(direction=state.plan.direction, pruner=pruner,
                                         sampler=optuna.samplers.TPESampler(seed=section.seed))
        self.asked: dict[int, object] = {}  # sweep trial number -> optuna trial
        for trial in state.trials:
            if trial.state in ("finished", "pruned"):
                self.study.add_trial(self._frozen(trial))

    def _frozen(self, trial: Trial):
        ts = self.optuna.trial.TrialState
        finished = trial.state == "finished" and trial.value is not None
        return self.optuna.trial.create_trial(
            params=trial.params, distributions=self.dists, value=trial.value if finished else None,
            intermediate_values={int(s): v for s, v in trial.intermediate.items()},
            state=ts.COMPLETE if finished else (ts.PRUNED if trial.state == "pruned" else ts.FAIL))

    def next_trial(self) -> Trial | None:
        trials = self.state.trials
        waiting = next((t for t in trials if t.state == "pending" and t.number not in self.asked), None)
        if waiting is not None:  # a trial of an earlier sitting that did not end: the same values again
            self.study.enqueue_trial(waiting.params, skip_if_exists=False)
            self.asked[waiting.number] = self.study.ask(self.dists)
            waiting.intermediate = {}
            return waiting
        if len(trials) >= self.state.plan.trials:
            return None
        if len(trials) < len(self.section.first):
            self.study.enqueue_trial(self.section.first[len(trials)], skip_if_exists=False)
        asked = self.study.ask(self.dists)
        trial = Trial(len(trials), {p.key: asked.params[p.key] for p in self.params})
        trials.append(trial)
        self.asked[trial.number] = asked
        return trial

    def report(self, trial: Trial, step: int, value: float) -> bool:
        """Hand a figure to the pruner; True when the trial should stop."""
        asked = self.asked[trial.number]
        asked.report(value, step)
        return asked.should_prune()

    def end(self, trial: Trial) -> None:
        ts = self.optuna.trial.TrialState
        asked = self.asked.pop(trial.number)
        if trial.state == "finished" and trial.value is not None:
            self.study.tell(asked, trial.value)
        elif trial.state == "pruned":
            self.study.tell(asked, state=ts.PRUNED)
        else:
            self.study.tell(asked, state=ts.FAIL)
