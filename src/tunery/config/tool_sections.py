"""Config sections of the tools around a run: MLflow tracking and `tunery sweep`. Part of the typed
schema (`tunery.config.schema` holds the whole `TrainConfig`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tunery.config.section import Section


class MlflowSection(Section):
    """Where `tracking: [mlflow]` writes (the `mlflow` extra)."""

    uri: str | None = Field(
        None,
        description="MLflow tracking URI (a server `http://...`, or `sqlite:///PATH.db`). Empty: "
        "`MLFLOW_TRACKING_URI` when set, else a local store `mlflow.db` (artifacts in `mlartifacts/`) "
        "in `output.dir`, shared by the runs there; browse it with `mlflow ui --backend-store-uri "
        "sqlite:///runs/mlflow.db`.",
    )
    experiment: str | None = Field(
        None, description="MLflow experiment of the run (empty: the name of `output.dir`, e.g. `runs`)."
    )


class SweepParam(Section):
    """One searched setting of `tunery sweep --search optuna`: a range (`low`, `high`) or `choices`."""

    key: str = Field(..., description="Dotted config key, e.g. `training.lr`.")
    low: float | None = Field(None, description="Lowest value of a range.")
    high: float | None = Field(None, description="Highest value of a range.")
    log: bool = Field(False, description="Sample the range on a log scale (learning rates).")
    integer: bool = Field(False, description="The range holds whole numbers (e.g. `lora.rank`).")
    choices: list[Any] | None = Field(None, description="The values to choose from, instead of a range.")

    @model_validator(mode="after")
    def _range_or_choices(self) -> "SweepParam":
        ranged = self.low is not None or self.high is not None
        if ranged == bool(self.choices):
            raise ValueError(f"sweep param {self.key}: give either low and high, or choices")
        if ranged and (self.low is None or self.high is None or self.low >= self.high):
            raise ValueError(f"sweep param {self.key}: low must be below high")
        if ranged and self.log and self.low <= 0:
            raise ValueError(f"sweep param {self.key}: a log range needs low > 0")
        return self


class SweepSection(Section):
    """`tunery sweep`: what trials are ranked by, the search space of `--search optuna`, and pruning."""

    metric: Literal["val_loss", "grader"] = Field(
        "val_loss",
        description="What ranks the trials: the best validation loss (lower is better) or the best score "
        "of the first grader in `eval.graders` (higher is better).",
    )
    trials: int = Field(10, ge=1, description="Trials of `--search optuna` (`--trials N` overrides).")
    params: list[SweepParam] = Field(
        default_factory=list,
        description="The search space of `--search optuna`: a list of `{key, low, high, log, integer}` "
        "ranges or `{key, choices}`, e.g. `[{key: training.lr, low: 1e-5, high: 1e-3, log: true}]`.",
    )
    first: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Trials run first with these values (e.g. the current best guess), "
        "e.g. `[{training.lr: 2e-4}]`; the search continues from them.",
    )
    pruner: Literal["median", "none"] = Field(
        "median",
        description="Stop a trial early when its validation figure at a step is worse than the median of "
        "earlier trials at that step (`none`: every trial runs to the end).",
    )
    startup_trials: int = Field(2, ge=0, description="Trials that finish before any can be pruned.")
    seed: int = Field(0, description="Seed of the search's sampler.")
