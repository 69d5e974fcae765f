"""`tunery train` in a subprocess: a kill -9 or SIGTERM at any step, then --resume, ends bitwise equal
to an uninterrupted run; the run folder holds what it promises."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import run_tunery, write_chat_jsonl

STEPS = 10


@pytest.fixture()
def project(tmp_path, tiny_model_dir):
    write_chat_jsonl(tmp_path / "train.jsonl", 24)
    write_chat_jsonl(tmp_path / "val.jsonl", 6, offset=100)
    (tmp_path / "run.yaml").write_text(
        f"base_model: {tiny_model_dir}\n"
        "data: {train: [train.jsonl], validation: [val.jsonl], max_length: 64}\n"
        "lora: {rank: 4, alpha: 8, dropout: 0.1}\n"
        f"training: {{max_steps: {STEPS}, batch_size: 2, lr: 1.0e-3, eval_every: 4, save_every: 1, "
        "keep_checkpoints: 2, threads: 1}\n"
    )
    return tmp_path


def adapter_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def start_training(project: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tunery.cli.main", "train", "run.yaml", f"output.name={name}", "--resume"],
        cwd=project, env=os.environ | {"PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(run: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    marker = run / "checkpoints" / f"step-{step:07d}" / "COMPLETE"
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training ended before step {step}:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no checkpoint at step {step}")
        time.sleep(0.02)


def test_uninterrupted_run_folder_and_kill_9_resume_is_bitwise_equal(project):
    done = run_tunery("train", "run.yaml", "output.name=straight", cwd=project)
    assert "config (value  [source]):" in done.stdout
    assert "training.lr = 0.001  [run.yaml]" in done.stdout
    straight = project / "runs" / "straight"
    info = json.loads((straight / "run.json").read_text())
    assert info["status"] == "finished" and info["step"] == STEPS
    assert (straight / "config.yaml").is_file() and (straight / "summary.md").is_file()
    assert (straight / "loss.png").stat().st_size > 1000
    assert (straight / "tokenizer" / "tokenizer_config.json").is_file()
    metrics = [json.loads(l) for l in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["kind"] == "train"] == list(range(1, STEPS + 1))
    assert [m["step"] for m in metrics if m["kind"] == "eval"] == [4, 8, 10]

    for kill_at in (2, 7):
        proc = start_training(project, "killed")
        wait_for_checkpoint(project / "runs" / "killed", kill_at, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resumed = run_tunery("train", "run.yaml", "output.name=killed", "--resume", cwd=project)
    assert "resumed from" in resumed.stdout
    killed = project / "runs" / "killed"
    expected, got = adapter_weights(straight), adapter_weights(killed)
    assert expected.keys() == got.keys() and len(expected) > 0
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    steps = [json.loads(l)["step"] for l in (killed / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "train"]
    assert steps == list(range(1, STEPS + 1))  # no step logged twice after the resumes

    again = run_tunery("train", "run.yaml", "output.name=killed", "--resume", cwd=project)
    assert "already finished" in again.stdout


def test_sigterm_writes_a_checkpoint_and_exits_143(project):
    proc = start_training(project, "term")
    run = project / "runs" / "term"
    wait_for_checkpoint(run, 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    assert "Continue with --resume" in out
    assert json.loads((run / "run.json").read_text())["status"] == "stopped"
    finished = run_tunery("train", "run.yaml", "output.name=term", "--resume", cwd=project)
    assert json.loads((run / "run.json").read_text())["status"] == "finished", finished.stdout


def test_existing_run_folder_needs_resume_or_overwrite(project):
    run_tunery("train", "run.yaml", "output.name=twice", "training.max_steps=2", cwd=project)
    again = run_tunery("train", "run.yaml", "output.name=twice", "training.max_steps=2", cwd=project, check=False)
    assert again.returncode == 2
    assert "the run folder runs/twice already exists (finished)" in again.stderr
    assert "--resume" in again.stderr and "Traceback" not in again.stderr
    run_tunery("train", "run.yaml", "output.name=twice", "training.max_steps=2", "--overwrite", cwd=project)


def test_config_error_is_short_and_names_the_key(project):
    bad = run_tunery("train", "run.yaml", "training.lrr=1", cwd=project, check=False)
    assert bad.returncode == 2
    assert "unknown key 'training.lrr' (command line): did you mean training.lr?" in bad.stderr
    assert "Traceback" not in bad.stderr
