"""`tunery runs` and `tunery runs rm`: statuses read from run.json as a user means them, the list in
the terminal and as JSON, and removal that touches only folders tunery made."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import run_tunery
from tunery.errors import TuneryError
from tunery.runfolder import write_marker
from tunery.runlist import format_runs, list_runs, remove_runs, run_status

HOST = socket.gethostname()


def make_run(runs: Path, name: str, **info) -> Path:
    """A run folder as `tunery train` leaves it: marker, run.json, config.yaml and metrics."""
    root = runs / name
    root.mkdir(parents=True)
    write_marker(root, "train")
    if info:
        (root / "run.json").write_text(json.dumps(info))
    (root / "config.yaml").write_text("data:\n  train: [/data/support.jsonl, /data/extra.jsonl]\n")
    (root / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 2.0}\n')
    return root


@pytest.fixture()
def runs(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "done", status="finished", base_model="smollm2-135m-instruct", method="sft", adapter="lora",
             step=40, total_steps=40, best_val_loss=0.8123, best_score=0.75, elapsed_s=61.2, pid=1, host=HOST)
    make_run(runs, "stopped", status="stopped", base_model="b", method="dpo", adapter="lora", step=5, total_steps=9)
    make_run(runs, "failed", status="failed", base_model="b", error="CUDA out of memory", step=1)
    make_run(runs, "fresh")  # the marker only: the run has not described itself yet
    (runs / "notes").mkdir()
    (runs / "notes" / "todo.txt").write_text("mine")  # a folder tunery did not make
    return runs


def test_statuses_from_run_json():
    assert run_status({"status": "finished"}) == "finished"
    assert run_status({"status": "failed", "error": "x"}) == "failed"
    assert run_status({"status": "stopped"}) == "interrupted"
    assert run_status({}) == "starting"
    assert run_status({"status": "running"}) == "running"  # no pid recorded (older tunery): believed
    # a pid that no process holds: the run was killed
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert run_status({"status": "running", "pid": dead.pid, "host": HOST}) == "interrupted"
    # a live process whose command line is tunery's
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "tunery"])
    try:
        assert run_status({"status": "running", "pid": alive.pid, "host": HOST}) == "running"
        assert run_status({"status": "running", "pid": alive.pid, "host": "another-machine"}) == "interrupted"
        alive.kill()  # killed, not yet reaped: a zombie is no running trainer
        wait_until_zombie(alive.pid)
        assert run_status({"status": "running", "pid": alive.pid, "host": HOST}) == "interrupted"
    finally:
        alive.kill()
        alive.wait()


def wait_until_zombie(pid: int) -> None:
    for _ in range(200):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return
        time.sleep(0.01)
    raise AssertionError(f"{pid} did not exit")


def test_list_has_every_run_and_nothing_else(runs):
    listed = {r.name: r for r in list_runs(runs)}
    assert set(listed) == {"done", "stopped", "failed", "fresh"}  # not "notes"
    done = listed["done"]
    assert (done.status, done.base, done.method, done.adapter) == ("finished", "smollm2-135m-instruct", "sft", "lora")
    assert done.data == ["support.jsonl", "extra.jsonl"]
    assert (done.step, done.total_steps, done.best_val_loss, done.best_score, done.elapsed_s) == (40, 40, 0.8123, 0.75, 61.2)
    assert listed["stopped"].status == "interrupted"
    assert listed["failed"].status == "failed" and listed["failed"].error == "CUDA out of memory"
    assert listed["fresh"].status == "starting"
    assert done.updated is not None and abs(done.updated - time.time()) < 60
    table = format_runs(list_runs(runs)).splitlines()
    assert table[0].split()[:3] == ["name", "status", "step"]
    row = next(line for line in table if line.startswith("done "))
    assert row.split()[:6] == ["done", "finished", "40/40", "sft/lora", "smollm2-135m-instruct", "support.jsonl,extra.jsonl"]
    assert "0.8123" in row and "0.75" in row and "61s" in row


def test_remove_deletes_run_folders_only(runs):
    with pytest.raises(TuneryError, match="not a tunery run folder"):
        remove_runs(runs, ["done", "notes"])
    assert (runs / "done").is_dir() and (runs / "notes" / "todo.txt").is_file()  # one bad name: nothing deleted
    with pytest.raises(TuneryError, match="no run named 'nope'"):
        remove_runs(runs, ["nope"])
    removed = remove_runs(runs, ["done", "stopped"])
    assert removed == [runs / "done", runs / "stopped"]
    assert not (runs / "done").exists() and not (runs / "stopped").exists()
    assert (runs / "notes" / "todo.txt").read_text() == "mine"


def test_remove_refuses_a_run_that_is_training(runs):
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "tunery"])
    try:
        make_run(runs, "busy", status="running", pid=alive.pid, host=HOST, base_model="b")
        with pytest.raises(TuneryError, match="training right now"):
            remove_runs(runs, ["busy"])
        assert (runs / "busy").is_dir()
    finally:
        alive.kill()
        alive.wait()


def test_cli_list_json_and_rm(runs):
    out = run_tunery("runs", "--runs", str(runs), "--json", cwd=runs.parent)
    listed = {r["name"]: r for r in json.loads(out.stdout)}
    assert listed["done"]["status"] == "finished" and listed["done"]["best_val_loss"] == 0.8123
    text = run_tunery("runs", "--runs", str(runs), cwd=runs.parent).stdout
    assert text.splitlines()[0].startswith("name") and "interrupted" in text
    refused = run_tunery("runs", "rm", "notes", "--runs", str(runs), cwd=runs.parent, check=False)
    assert refused.returncode == 2 and "is not a tunery run folder" in refused.stderr
    assert (runs / "notes").is_dir()
    gone = run_tunery("runs", "rm", "failed", "--runs", str(runs), cwd=runs.parent)
    assert f"removed {runs / 'failed'}" in gone.stdout and not (runs / "failed").exists()


def test_a_training_run_shows_its_newest_logged_step(tmp_path):
    """run.json gets `step` when the run ends; while it trains the step is the newest metrics line's."""
    root = make_run(tmp_path / "runs", "training", status="running", base_model="b", total_steps=50)
    lines = [{"kind": "train", "step": s, "loss": 1.0} for s in (1, 2, 3)] + [{"kind": "eval", "step": 3, "val_loss": 1}]
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "train", "st')
    (listed,) = list_runs(tmp_path / "runs")
    assert (listed.step, listed.total_steps) == (3, 50)  # the torn last line (a write under way) is skipped
    assert "3/50" in format_runs([listed])


def test_a_local_base_recorded_relative_to_the_run_is_shown_absolute(tmp_path):
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    make_run(tmp_path / "runs", "local", status="finished", base_model="../../models/tiny")
    (listed,) = list_runs(tmp_path / "runs")
    assert listed.base == str((tmp_path / "models" / "tiny").resolve())
