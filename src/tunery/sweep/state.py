"""sweep.json: the plan of a sweep and each trial's state, rewritten atomically after every change, so a
killed sweep resumes where it stood: finished and pruned trials are kept, the others run again (a trial
with a checkpoint continues from it)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunery.errors import TuneryError
from tunery.runfolder import MARKER, RUN_MAKERS, RunFolder, made_by, write_marker, write_text_atomic

MAKER = "sweep"
# What a sweep folder holds (trial-NNN/ run folders aside): what --overwrite may delete, and nothing else.
OWN_FILES = {MARKER, "sweep.json", "results.md", "results.json", "sweep.png", "best.yaml", "logs", "mlflow.db",
             "mlartifacts", ".mlflow.db.lock"}
DONE = ("finished", "pruned")  # states a resumed sweep does not run again


@dataclass
class Trial:
    number: int
    params: dict[str, Any]
    state: str = "pending"  # pending | running | finished | pruned | failed
    value: float | None = None  # the trial's best figure (the sweep's metric)
    intermediate: dict[str, float] = field(default_factory=dict)  # step (as text: JSON keys) -> figure
    error: str | None = None

    @property
    def name(self) -> str:
        return f"trial-{self.number:03d}"


@dataclass
class Plan:
    """What defines a sweep; a resumed sweep must be given the same."""

    config: str
    overrides: list[str]
    mode: str  # grid | optuna
    metric: str
    direction: str  # minimize | maximize
    space: Any  # grid: the points; optuna: the sweep.params as dicts
    trials: int


@dataclass
class SweepState:
    folder: Path
    plan: Plan
    trials: list[Trial] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.folder / "sweep.json"

    def run_of(self, trial: Trial) -> RunFolder:
        return RunFolder(self.folder / trial.name)

    def log_of(self, trial: Trial) -> Path:
        return self.folder / "logs" / f"{trial.name}.log"

    def save(self) -> None:
        data = {"plan": asdict(self.plan), "trials": [asdict(t) for t in self.trials]}
        write_text_atomic(self.path, json.dumps(data, indent=2) + "\n")


def open_sweep(folder: Path, plan: Plan, overwrite: bool) -> SweepState:
    """The sweep in `folder`: new (the folder is created with tunery's marker), or the one there when it
    has the same plan (resumed). Never a folder tunery did not make."""
    if folder.exists() and not folder.is_dir():
        raise TuneryError(f"{folder} is a file, not a sweep folder", fix="choose another --out")
    if folder.exists() and any(folder.iterdir()):
        found = made_by(folder)
        if found != MAKER:
            what = f"the output of `tunery {found}`" if found else f"files tunery did not write (no {MARKER} marker)"
            raise TuneryError(f"{folder} already exists and holds {what}", fix="choose another --out folder")
        if overwrite:
            _clear(folder)
        else:
            return _resume(folder, plan)
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    write_marker(folder, MAKER)
    state = SweepState(folder, plan)
    state.save()
    return state


def _resume(folder: Path, plan: Plan) -> SweepState:
    data = json.loads((folder / "sweep.json").read_text())
    saved = Plan(**data["plan"])
    differs = [k for k in asdict(plan) if k != "trials" and asdict(plan)[k] != asdict(saved)[k]]
    if differs:
        raise TuneryError(f"{folder} holds a different sweep (its {', '.join(differs)} differ)",
                          fix="give the same config and options to resume it, --overwrite to start again, "
                              "or another --out")
    saved.trials = max(saved.trials, plan.trials)  # --trials may grow a search
    trials = [Trial(**t) for t in data["trials"]]
    for trial in trials:
        if trial.state not in DONE:
            trial.state, trial.error = "pending", None
    (folder / "logs").mkdir(exist_ok=True)
    return SweepState(folder, saved, trials)


def _clear(folder: Path) -> None:
    """Delete a sweep folder for --overwrite: only when everything in it is the sweep's own (its files and
    trial run folders made by tunery train); anything else is named and kept."""
    entries = list(folder.iterdir())
    foreign = [e.name for e in entries if e.name not in OWN_FILES
               and not (e.name.startswith("trial-") and made_by(e) in RUN_MAKERS)]
    if foreign:
        raise TuneryError(f"{folder} holds files the sweep did not write: {', '.join(sorted(foreign)[:5])}",
                          why="--overwrite deletes only what tunery made", fix="move them away, or choose another --out")
    shutil.rmtree(folder)
