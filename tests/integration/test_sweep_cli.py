"""`tunery sweep` on the tiny model through the real command line: a 2x2 grid gives four ordinary run
folders and a table whose figures are each run's own; an Optuna search prunes a deliberately bad trial,
which the table shows as pruned; a sweep killed with kill -9 resumes and runs only what was unfinished."""

from __future__ import annotations

import json
import statistics
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cli_helpers import kill_tree, run_tunery, write_chat_jsonl
from tunery.config.load import load_config
from tunery.runfolder import RunFolder, made_by


@pytest.fixture()
def project(tmp_path, tiny_model_dir):
    write_chat_jsonl(tmp_path / "train.jsonl", 24)
    write_chat_jsonl(tmp_path / "val.jsonl", 6, offset=100)
    return tmp_path


def write_config(project: Path, steps: int, extra: str = "", save_every: int | None = None) -> None:
    save = f", save_every: {save_every}" if save_every else ""
    (project / "run.yaml").write_text(
        f"base_model: {os.environ['TINY_MODEL_DIR']}\n"
        "data: {train: [train.jsonl], validation: [val.jsonl], max_length: 64}\n"
        "lora: {rank: 4, alpha: 8, dropout: 0.0}\n"
        f"training: {{max_steps: {steps}, batch_size: 2, lr: 1.0e-3, eval_every: 2, warmup_ratio: 0.0, "
        f"threads: 1{save}}}\n" + extra)


@pytest.fixture(autouse=True)
def tiny_env(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("TINY_MODEL_DIR", str(tiny_model_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def best_val(run: Path) -> tuple[float, int]:
    evals = [r for r in RunFolder(run).read_metrics() if r["kind"] == "eval"]
    best = min(r["val_loss"] for r in evals)
    return best, min(r["step"] for r in evals if r["val_loss"] == best)


def table_rows(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| trial-"):
            rows[cells[0].rstrip(" *")] = cells
    return rows


def test_a_2x2_grid_gives_four_run_folders_and_a_table_of_their_own_figures(project):
    """Two trials at a time (--parallel 2), each with the one thread its config asks for."""
    write_config(project, steps=4)
    done = run_tunery("sweep", "run.yaml", "--grid", "training.lr=1e-3,1e-2", "lora.rank=4,8", "--parallel", "2",
                      cwd=project)
    sweep = project / "runs" / "run-sweep"
    assert made_by(sweep) == "sweep"
    lines = done.stdout.splitlines()
    assert lines.index("trial-001 started: training.lr=0.001 lora.rank=8") < next(
        i for i, line in enumerate(lines) if line.startswith("trial-000 finished"))  # two at once
    trials = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.startswith("trial-"))
    assert trials == ["trial-000", "trial-001", "trial-002", "trial-003"]
    rows = table_rows(done.stdout)
    expected = [(0.001, 4), (0.001, 8), (0.01, 4), (0.01, 8)]
    values = {}
    for name, (lr, rank) in zip(trials, expected):
        run = sweep / name
        assert made_by(run) == "train" and RunFolder(run).read_info()["status"] == "finished"
        cfg = RunFolder(run).read_config()
        assert (cfg.training.lr, cfg.lora.rank) == (lr, rank)  # the trial trained with its own settings
        value, step = best_val(run)
        values[name] = value
        # columns: trial, state, training.lr, lora.rank, val_loss (best), best step, steps, time
        assert rows[name][1] == "finished" and rows[name][4] == f"{value:.4f}" and rows[name][5] == str(step)
        assert rows[name][6] == "4/4"
    best = min(values, key=values.get)
    assert f"| {best} *" in done.stdout
    results = json.loads((sweep / "results.json").read_text())
    assert results["best"] == best and {t["trial"]: t["value"] for t in results["trials"]} == values
    best_cfg = load_config(sweep / "best.yaml").config  # a config tunery train takes as it is
    assert (best_cfg.training.lr, best_cfg.lora.rank) == dict(zip(trials, expected))[best]
    assert best_cfg.output.name == "run-best"
    assert (sweep / "sweep.png").read_bytes()[:4] == b"\x89PNG"

    # Run again: nothing is trained twice, and --json gives the same figures.
    logs = {p.name: p.read_text() for p in (sweep / "logs").iterdir()}
    again = run_tunery("sweep", "run.yaml", "--grid", "training.lr=1e-3,1e-2", "lora.rank=4,8", "--json", cwd=project)
    assert {p.name: p.read_text() for p in (sweep / "logs").iterdir()} == logs
    assert {t["trial"]: t["value"] for t in json.loads(again.stdout)["trials"]} == values


def test_optuna_prunes_a_deliberately_bad_trial_and_the_table_shows_it(project):
    # Two sensible trials first (the pruner's reference), then one whose learning rate is far too small
    # to learn anything in the steps it has.
    write_config(project, steps=40, extra=(
        "sweep:\n  trials: 3\n  startup_trials: 2\n"
        "  params: [{key: training.lr, low: 1.0e-6, high: 1.0e-1, log: true}]\n"
        "  first: [{training.lr: 1.0e-2}, {training.lr: 2.0e-2}, {training.lr: 1.0e-6}]\n"))
    done = run_tunery("sweep", "run.yaml", "--search", "optuna", cwd=project, timeout=600)
    sweep = project / "runs" / "run-sweep"
    rows = table_rows(done.stdout)
    assert [rows[t][1] for t in ("trial-000", "trial-001", "trial-002")] == ["finished", "finished", "pruned"]
    assert rows["trial-002"][2] == "1e-06"
    bad = RunFolder(sweep / "trial-002").read_info()
    assert bad["status"] == "stopped" and bad["step"] < 40  # stopped early, with a checkpoint
    assert "trial-002 step 2: val_loss" in done.stdout and "; pruned" in done.stdout
    good = [best_val(sweep / t)[0] for t in ("trial-000", "trial-001")]
    bad_at_2 = next(r["val_loss"] for r in RunFolder(sweep / "trial-002").read_metrics()
                    if r["kind"] == "eval" and r["step"] == 2)
    firsts = [next(r["val_loss"] for r in RunFolder(sweep / t).read_metrics() if r["kind"] == "eval" and r["step"] == 2)
              for t in ("trial-000", "trial-001")]
    assert bad_at_2 > statistics.median(firsts)  # worse than the median of the others at that step: why it was pruned
    assert json.loads((sweep / "results.json").read_text())["best"] == ["trial-000", "trial-001"][good.index(min(good))]


def test_a_killed_sweep_resumes_and_reruns_only_the_unfinished_trial(project):
    # The second trial is long enough (240 steps, a checkpoint each) that the kill lands inside it on
    # any machine: a 30-step trial of the tiny model can end between two polls.
    write_config(project, steps=30, save_every=1)
    grid = ["--grid", "training.max_steps=30,240"]
    command = [sys.executable, "-m", "tunery.cli.main", "sweep", "run.yaml", *grid]
    proc = subprocess.Popen(command, cwd=project, env=os.environ | {"PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sweep = project / "runs" / "run-sweep"
    deadline = time.monotonic() + 300
    while not any(int(c.parent.name.split("-")[1]) >= 3
                  for c in (sweep / "trial-001" / "checkpoints").glob("step-*/COMPLETE")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "trial-001 never reached step 3"
        time.sleep(0.01)
    kill_tree(proc)  # kill -9 of the sweep and its trial, as a power cut would
    proc.wait()
    first = sweep / "trial-000"
    assert RunFolder(first).read_info()["status"] == "finished"
    assert RunFolder(sweep / "trial-001").read_info()["status"] == "running"
    kept = {p: p.read_bytes() for p in (first / "metrics.jsonl", first / "run.json", sweep / "logs" / "trial-000.log")}

    done = run_tunery("sweep", "run.yaml", *grid, cwd=project)
    assert "resuming, 1 done" in done.stdout
    assert "trial-000 started" not in done.stdout and "trial-001 started" in done.stdout
    assert {p: p.read_bytes() for p in kept} == kept  # the finished trial was not run again
    assert "resumed from" in (sweep / "logs" / "trial-001.log").read_text()  # continued from its checkpoint
    rows = table_rows(done.stdout)
    assert rows["trial-000"][1] == rows["trial-001"][1] == "finished"
    assert rows["trial-001"][3] == f"{best_val(sweep / 'trial-001')[0]:.4f}"
    steps = [r["step"] for r in RunFolder(sweep / "trial-001").read_metrics() if r["kind"] == "train"]
    last = RunFolder(sweep / "trial-001").read_info()["step"]
    assert last > 3 and steps == list(range(1, last + 1))  # each step logged once across the two sittings
