"""The parts of `tunery sweep` that need no training: grid axes, the search space, the sweep folder's
guards and plan, and the results table."""

from __future__ import annotations

import json

import pytest

from tunery.config.load import validate
from tunery.errors import TuneryError
from tunery.sweep.report import best_row, rows_of, table
from tunery.sweep.space import as_override, check_space, grid_points, parse_axis
from tunery.sweep.state import Plan, Trial, open_sweep
from tunery.sweep.trials import best_of, figures_of


def test_grid_axes_are_read_as_yaml_numbers_and_combined_last_axis_fastest():
    assert parse_axis("training.lr=1e-4,2e-4") == ("training.lr", [1e-4, 2e-4])
    assert parse_axis("lora.target_modules=[q_proj,v_proj]") == ("lora.target_modules", [["q_proj", "v_proj"]])
    points = grid_points([parse_axis("training.lr=1e-4,2e-4"), parse_axis("lora.rank=8,16")])
    assert points == [{"training.lr": 1e-4, "lora.rank": 8}, {"training.lr": 1e-4, "lora.rank": 16},
                      {"training.lr": 2e-4, "lora.rank": 8}, {"training.lr": 2e-4, "lora.rank": 16}]
    assert as_override("training.lr", 1e-4) == "training.lr=0.0001"


def test_a_mistyped_or_forbidden_key_is_refused_with_a_suggestion():
    with pytest.raises(TuneryError, match="did you mean training.lr"):
        parse_axis("training.learning_rate=1e-4,2e-4")
    with pytest.raises(TuneryError, match="cannot vary between trials"):
        parse_axis("output.name=a,b")
    with pytest.raises(TuneryError, match="repeats a value"):
        parse_axis("lora.rank=8,8")


def test_the_search_space_and_its_first_trials_are_checked():
    cfg = validate({"data": {"train": ["x.jsonl"]}, "sweep": {
        "params": [{"key": "training.lr", "low": 1e-5, "high": 1e-3, "log": True},
                   {"key": "lora.rank", "choices": [8, 16]}],
        "first": [{"training.lr": 1e-4, "lora.rank": 8}]}})
    check_space(cfg.sweep.params, cfg.sweep.first)
    with pytest.raises(TuneryError, match="outside its range"):
        check_space(cfg.sweep.params, [{"training.lr": 1.0}])
    with pytest.raises(TuneryError, match="does not search"):
        check_space(cfg.sweep.params, [{"training.epochs": 2}])
    with pytest.raises(TuneryError, match="the config is not valid"):
        validate({"data": {"train": ["x.jsonl"]}, "sweep": {"params": [{"key": "training.lr", "low": 1e-3, "high": 1e-5}]}})
    with pytest.raises(TuneryError, match="sweep.metric is 'grader' but eval.graders is empty"):
        validate({"data": {"train": ["x.jsonl"]}, "sweep": {"metric": "grader"}})


def plan(**changes) -> Plan:
    return Plan(**({"config": "/x/run.yaml", "overrides": [], "mode": "grid", "metric": "val_loss",
                    "direction": "minimize", "space": [{"lora.rank": 8}, {"lora.rank": 16}], "trials": 2} | changes))


def test_the_sweep_folder_is_tunerys_and_resumes_only_the_same_plan(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(TuneryError, match="files tunery did not write"):
        open_sweep(foreign, plan(), overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"

    state = open_sweep(tmp_path / "s", plan(), overwrite=False)
    state.trials = [Trial(0, {"lora.rank": 8}, state="finished", value=1.5), Trial(1, {"lora.rank": 16}, state="running")]
    state.save()
    resumed = open_sweep(tmp_path / "s", plan(), overwrite=False)
    assert [t.state for t in resumed.trials] == ["finished", "pending"]  # the unfinished one runs again
    with pytest.raises(TuneryError, match="holds a different sweep"):
        open_sweep(tmp_path / "s", plan(space=[{"lora.rank": 4}]), overwrite=False)
    (tmp_path / "s" / "my-notes.txt").write_text("keep me")
    with pytest.raises(TuneryError, match="holds files the sweep did not write: my-notes.txt"):
        open_sweep(tmp_path / "s", plan(space=[{"lora.rank": 4}]), overwrite=True)
    (tmp_path / "s" / "my-notes.txt").unlink()
    assert open_sweep(tmp_path / "s", plan(space=[{"lora.rank": 4}]), overwrite=True).trials == []


def test_the_table_reads_each_trials_figures_from_its_run_folder(tmp_path):
    state = open_sweep(tmp_path / "s", plan(), overwrite=False)
    state.trials = [Trial(0, {"lora.rank": 8}, state="finished"), Trial(1, {"lora.rank": 16}, state="pruned")]
    for trial, losses in zip(state.trials, ([3.0, 2.5, 2.75], [4.0])):
        run = state.run_of(trial)
        run.root.mkdir()
        for step, loss in enumerate(losses, start=1):
            run.append_metrics({"kind": "eval", "step": 2 * step, "val_loss": loss})
        run.update_info(step=2 * len(losses), total_steps=6, elapsed_s=1.0)
    rows = rows_of(state)
    assert [(r["value"], r["best_step"]) for r in rows] == [(2.5, 4), (4.0, 2)]
    assert best_row(state, rows)["trial"] == "trial-000"
    text = table(state, rows)
    assert "| trial-000 * | finished | 8         | 2.5000" in text and "| trial-001   | pruned   | 16" in text
    assert "6/6" in text and "2/6" in text


def test_figures_and_best_follow_the_metric_and_its_direction():
    records = [{"kind": "eval", "step": 2, "val_loss": 2.0}, {"kind": "grader", "step": 2, "score": 0.5},
               {"kind": "eval", "step": 4, "val_loss": 1.0}, {"kind": "grader", "step": 4, "score": 0.25},
               {"kind": "train", "step": 4, "loss": 0.1}]
    assert figures_of(records, "val_loss") == {2: 2.0, 4: 1.0}
    assert best_of(figures_of(records, "val_loss"), "minimize") == (1.0, 4)
    assert best_of(figures_of(records, "grader"), "maximize") == (0.5, 2)
    assert json.dumps(best_of({}, "minimize")) == "[null, null]"
