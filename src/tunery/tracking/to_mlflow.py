"""An MLflow run per tunery run (the `mlflow` extra), written through `MlflowClient` (no global state).

Where: `mlflow.uri`, else `MLFLOW_TRACKING_URI`, else a local SQLite store `mlflow.db` with artifacts in
`mlartifacts/`, both in the run's `output.dir` (MLflow's own recommended local store; its file store is
refused by MLflow 3 unless asked for). The experiment is `mlflow.experiment` or the name of `output.dir`,
the MLflow run is named after the run folder. Logged: the resolved config as params (flattened dotted
keys) and as the artifact `config.yaml`, every metrics line as `<kind>/<key>` at its step, the final
figures as `final/<name>`, and the status (FINISHED, KILLED for a stopped run, FAILED). The MLflow run id
is kept in the run folder's tracking.json, so `--resume` continues the same MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from tunery.atomic import write_text_atomic
from tunery.config.schema import TrainConfig
from tunery.tracking.values import final_figures, scalars_of

BATCH = 100  # MLflow accepts at most 100 params and 1000 metrics per log_batch request
STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
STATE_FILE = "tracking.json"


def store_of(cfg: TrainConfig, output_dir: Path) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment or None for the server's default)."""
    uri = cfg.mlflow.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, None
    return f"sqlite:///{output_dir.resolve() / 'mlflow.db'}", (output_dir.resolve() / "mlartifacts").as_uri()


def saved_run_id(root: Path) -> str | None:
    try:
        return json.loads((root / STATE_FILE).read_text()).get("mlflow_run_id")
    except (OSError, ValueError, AttributeError):
        return None


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """Dotted keys -> values as text (MLflow params are strings of at most 6000 characters)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= flat_params(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = json.dumps(value)[:6000] if not isinstance(value, str) else value[:6000]
    return flat


class MlflowTracker:
    def __init__(self, cfg: TrainConfig, root: Path):
        self.cfg, self.root = cfg, root
        self.client = None
        self.run_id: str | None = None

    def start(self, config_yaml: str, config: dict) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # their INFO lines would interleave with the progress bar
            logging.getLogger(name).setLevel(logging.WARNING)
        output_dir = self.root.parent
        uri, artifacts = store_of(self.cfg, output_dir)
        experiment = self.cfg.mlflow.experiment or output_dir.resolve().name
        with _local_store_lock(uri, output_dir):  # two trials creating one SQLite store's tables at once
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment)
            exp_id = found.experiment_id if found else self.client.create_experiment(experiment, artifacts)
        self.run_id = saved_run_id(self.root)
        if self.run_id is not None:  # a resumed run: the same MLflow run, running again
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(exp_id, run_name=self.root.name, tags={"tunery.run_folder": str(self.root)})
        self.run_id = run.info.run_id
        write_text_atomic(self.root / STATE_FILE, json.dumps({"mlflow_run_id": self.run_id}) + "\n")
        params = [Param(k, v) for k, v in flat_params(config).items()]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + BATCH])
        self.client.log_text(self.run_id, config_yaml, "config.yaml")

    def metrics(self, record: dict) -> None:
        self.metrics_batch([record])

    def metrics_batch(self, records: list[dict]) -> None:
        """Lines that queued up together, in requests of at most 1000 figures (MLflow's limit)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, int(r.get("step", 0))) for r in records for key, value in scalars_of(r).items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def finish(self, status: str, figures: dict) -> None:
        self._log({f"final/{k}": v for k, v in final_figures(figures).items()}, int(figures.get("step") or 0))
        self.client.set_terminated(self.run_id, STATUS.get(status, "FINISHED"))

    def close(self) -> None:
        pass

    def _log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)


def _local_store_lock(uri: str, output_dir: Path):
    """An inter-process lock for a local SQLite store (creating its tables is not safe to race)."""
    from contextlib import nullcontext

    from filelock import FileLock

    if not uri.startswith("sqlite:///"):
        return nullcontext()
    output_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(output_dir / ".mlflow.db.lock"), timeout=120)
