"""`tunery eval` figures of a tracked run, added to its trackers (the run's `tracking:`): each row of the
comparison (the tuned run, its baselines) as `eval_report/<row>/<grader>` and `eval_report/<row>/loss`,
the forgetting probe as `eval_report/probe_before` / `probe_after`, at the run's last step; MLflow also
gets eval.json as an artifact. A tracker that fails here is warned about; the evaluation stands."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from tunery.runfolder import RunFolder
from tunery.tracking.background import Background


def figures_of(result: dict, run: str) -> dict[str, float]:
    """The eval result's numbers for one evaluated run folder, named for a tracker."""
    figures: dict[str, float] = {}
    for row in result.get("systems", []):
        name = row["system"]["name"].replace(" ", "_")
        for label, score in (row.get("scores") or {}).items():
            figures[f"eval_report/{name}/{label}"] = score.get("mean")
        figures[f"eval_report/{name}/loss"] = (row.get("loss") or {}).get("loss")
    probe = (result.get("forgetting") or {}).get(run) or {}
    for when in ("before", "after"):
        figures[f"eval_report/probe_{when}"] = (probe.get(when) or {}).get("mean")
    return {k: float(v) for k, v in figures.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def track_eval(result: dict, eval_json: Path | None, log: Callable[[str], None]) -> None:
    """Send the figures to the trackers of every evaluated run folder that names some."""
    for run in result.get("targets", []):
        folder = RunFolder(Path(run))
        cfg = folder.read_config() if folder.config.is_file() else None
        if cfg is None or not cfg.tracking:
            continue
        figures = figures_of(result, run)
        step = int(folder.read_info().get("step") or 0)
        for name in cfg.tracking:
            tracker = Background(name, EvalSink(name, cfg, folder.root), log)
            tracker.submit("write", figures, step, eval_json)
            tracker.close()
        log(f"eval figures sent to {', '.join(cfg.tracking)} of {run}")


class EvalSink:
    """Writes a finished run's eval figures to one tracker."""

    def __init__(self, name: str, cfg, root: Path):
        self.name, self.cfg, self.root = name, cfg, root

    def write(self, figures: dict[str, float], step: int, eval_json: Path | None) -> None:
        if self.name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(log_dir=str(self.root / "tensorboard")) as writer:
                for key, value in figures.items():
                    writer.add_scalar(key, value, step)
            return
        from tunery.tracking.to_mlflow import MlflowTracker, saved_run_id

        if saved_run_id(self.root) is None:
            raise RuntimeError(f"{self.root} has no MLflow run (tracking.json): was it trained with mlflow tracking?")
        tracker = MlflowTracker(self.cfg, self.root)
        tracker.start("", {})  # reopens the run's MLflow run (its id is in tracking.json)
        tracker._log(figures, step)
        if eval_json is not None and eval_json.is_file():
            tracker.client.log_text(tracker.run_id, eval_json.read_text(), "eval.json")
        tracker.client.set_terminated(tracker.run_id, "FINISHED")

    def close(self) -> None:
        pass
