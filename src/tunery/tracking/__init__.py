"""Experiment tracking: the run's metrics, resolved config and evaluation figures, also written to
TensorBoard and/or MLflow (`tracking: [tensorboard, mlflow]`).

metrics.jsonl stays the record; trackers are copies for people who browse runs in those tools. Every
metrics line the loop writes reaches the trackers through the run folder's listeners (the loop's
existing log step, validation and grader scoring: nothing is measured twice). Writes go through a
background thread (`Background`), so a slow store or server never holds up a training step, and a
tracker that breaks mid-run is warned about once and never makes the run fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tunery._deps import require
from tunery.config.schema import TrainConfig
from tunery.tracking.background import Background

# tracker name -> (module imported to check it is installed, pip package, tunery extra)
EXTRAS = {
    "tensorboard": ("tensorboard", "tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow", "mlflow"),
}


def check_installed(cfg: TrainConfig) -> None:
    """Raise the error naming the extra for each tracker in `cfg.tracking` that is not installed
    (called before any model is loaded)."""
    for name in cfg.tracking:
        module, package, extra = EXTRAS[name]
        require(module, extra=extra, package=package)


class Tracking:
    """The trackers of one run, fanned out: call it with a metrics record; `close` at the end."""

    def __init__(self, trackers: list[Background]):
        self.trackers = trackers

    def __call__(self, record: dict) -> None:
        for tracker in self.trackers:
            tracker.submit("metrics", record)

    def finish(self, status: str, figures: dict) -> None:
        """Write the run's final figures and status, and wait (bounded) for pending writes."""
        for tracker in self.trackers:
            tracker.submit("finish", status, figures)
        for tracker in self.trackers:
            tracker.close()

    def __bool__(self) -> bool:
        return bool(self.trackers)


def open_tracking(cfg: TrainConfig, root: Path, config_yaml: str, resumed_step: int,
                  log: Callable[[str], None]) -> Tracking:
    """Start the trackers named in `cfg.tracking` for the run folder `root` (their first writes happen
    on their threads). `resumed_step`: the step a resumed run continues from (0 for a new run)."""
    trackers = []
    for name in cfg.tracking:
        if name == "tensorboard":
            from tunery.tracking.to_tensorboard import TensorBoardTracker

            sink = TensorBoardTracker(root / "tensorboard", resumed_step)
        else:
            from tunery.tracking.to_mlflow import MlflowTracker

            sink = MlflowTracker(cfg, root)
        tracker = Background(name, sink, log)
        tracker.submit("start", config_yaml, cfg.model_dump(mode="json"))
        trackers.append(tracker)
    if trackers:
        log(f"tracking: {', '.join(cfg.tracking)}")
    return Tracking(trackers)
