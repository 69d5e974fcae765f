"""One trial as a `tunery train` process, watched through its metrics.jsonl.

The process is `tunery train CONFIG OVERRIDES... output.dir=SWEEP output.name=trial-NNN --resume`: a new
trial starts, a trial killed earlier continues from its newest checkpoint, a finished one is left as it
is. It runs in a session of its own, so a Ctrl-C in the terminal reaches the sweep alone, which sends each
trial one SIGTERM (a second would stop it without a checkpoint); on Linux it also gets SIGTERM when the
sweep process dies, so a killed sweep leaves no trial training on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunery.sweep.space import as_override
from tunery.sweep.state import SweepState, Trial

FIGURE = {"val_loss": ("eval", "val_loss"), "grader": ("grader", "score")}  # metric -> (kind, key)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent (the sweep) dies (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def figures_of(records: list[dict], metric: str) -> dict[int, float]:
    """The sweep's metric at each step where the run measured it."""
    kind, key = FIGURE[metric]
    return {int(r["step"]): float(r[key]) for r in records
            if r.get("kind") == kind and isinstance(r.get(key), (int, float))}


def best_of(figures: dict[int, float], direction: str) -> tuple[float | None, int | None]:
    """(best figure, its step); the first step wins a tie, as the run's own best step does."""
    if not figures:
        return None, None
    pick = min if direction == "minimize" else max
    best = pick(figures.values())
    return best, min(step for step, value in figures.items() if value == best)


@dataclass
class TrialProcess:
    trial: Trial
    proc: subprocess.Popen
    started: float
    pruning: bool = False
    seen: set[int] = field(default_factory=set)  # steps whose figure was already handed on

    @classmethod
    def start(cls, sweep: SweepState, trial: Trial, threads: int | None) -> "TrialProcess":
        plan = sweep.plan
        command = [sys.executable, "-m", "tunery.cli.main", "train", plan.config, *plan.overrides,
                   *(as_override(k, v) for k, v in trial.params.items()),
                   f"output.dir={sweep.folder}", f"output.name={trial.name}", "--resume"]
        if threads:
            command.insert(-1, f"training.threads={threads}")
        log = open(sweep.log_of(trial), "a", encoding="utf-8")
        log.write(f"$ {' '.join(command[1:])}\n")
        log.flush()
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        try:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            log.close()
        trial.state = "running"
        return cls(trial, proc, time.monotonic())

    def new_figures(self, sweep: SweepState) -> list[tuple[int, float]]:
        """Figures of the sweep's metric logged since the last call, in step order."""
        found = figures_of(sweep.run_of(self.trial).read_metrics(), sweep.plan.metric)
        fresh = sorted((step, value) for step, value in found.items() if step not in self.seen)
        self.seen.update(step for step, _ in fresh)
        self.trial.intermediate.update({str(step): value for step, value in fresh})
        return fresh

    def prune(self) -> None:
        """Stop the trial the way a user would: one SIGTERM, so it writes a checkpoint and exits."""
        if not self.pruning and self.proc.poll() is None:
            self.pruning = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def settle(self, sweep: SweepState) -> None:
        """After the process ended: the trial's state, best figure and error."""
        self.new_figures(sweep)
        trial, code = self.trial, self.proc.returncode
        figures = {int(s): v for s, v in trial.intermediate.items()}
        trial.value, _ = best_of(figures, sweep.plan.direction)
        status = sweep.run_of(trial).read_info().get("status")
        if self.pruning:
            trial.state = "pruned"
        elif code == 0 and status == "finished":
            trial.state = "finished"
        else:
            trial.state = "failed"
            trial.error = f"exit code {code}: {last_line(sweep.log_of(trial))} (log: {sweep.log_of(trial)})"


def last_line(log: Path) -> str:
    """The error a failed trial printed (its last non-empty line)."""
    try:
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"
