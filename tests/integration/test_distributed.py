"""Data parallelism through torchrun on CPU (gloo): 2 processes x batch 4 == 1 process x batch 8, and a
2-process run killed with kill -9 resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import run_tunery, write_chat_jsonl


@pytest.fixture()
def project(tmp_path, tiny_model_dir):
    write_chat_jsonl(tmp_path / "train.jsonl", 32)
    write_chat_jsonl(tmp_path / "val.jsonl", 6, offset=100)
    (tmp_path / "run.yaml").write_text(
        f"base_model: {tiny_model_dir}\n"
        "data: {train: [train.jsonl], validation: [val.jsonl], max_length: 64}\n"
        "lora: {rank: 4, alpha: 8, dropout: 0.0}\n"
        "training: {max_steps: 6, lr: 1.0e-2, eval_every: 3, save_every: 1, threads: 1}\n"
    )
    return tmp_path


def adapter(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def test_two_processes_of_batch_4_equal_one_process_of_batch_8(project):
    run_tunery("train", "run.yaml", "output.name=one", "training.batch_size=8", cwd=project)
    two = run_tunery("train", "run.yaml", "output.name=two", "training.batch_size=4", "--nproc", "2",
                     cwd=project, timeout=600)
    assert "launching 2 processes" in two.stdout
    one_w, two_w = adapter(project / "runs" / "one"), adapter(project / "runs" / "two")
    assert one_w.keys() == two_w.keys()
    for name in one_w:  # summation order differs between the layouts: equal to float32 rounding
        torch.testing.assert_close(two_w[name], one_w[name], rtol=1e-4, atol=1e-6)
    one_m = [json.loads(l) for l in (project / "runs" / "one" / "metrics.jsonl").read_text().splitlines()]
    two_m = [json.loads(l) for l in (project / "runs" / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(one_m) == len(two_m)  # one set of lines: only rank 0 writes
    for a, b in zip(one_m, two_m):
        for key in ("loss", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4)


def kill_all_with(marker: str) -> None:
    """kill -9 every process whose command line holds `marker`, as a power cut would."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline and int(entry) != os.getpid():
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_two_process_run_resumes_exactly_after_kill_9(project):
    # 30 steps, so that the kill lands while the run is still going
    args = ["run.yaml", "lora.dropout=0.1", "training.batch_size=4", "training.max_steps=30", "--nproc", "2"]
    run_tunery("train", *args, "output.name=straight", cwd=project, timeout=600)
    cmd = [sys.executable, "-m", "tunery.cli.main", "train", *args, "output.name=killed", "--resume"]
    proc = subprocess.Popen(cmd, cwd=project, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    marker = project / "runs" / "killed" / "checkpoints" / "step-0000003" / "COMPLETE"
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "no checkpoint at step 3"
    kill_all_with("output.name=killed")  # the launcher, torchrun and both workers (own sessions)
    proc.wait()
    resumed = run_tunery("train", *args, "output.name=killed", "--resume", cwd=project, timeout=600)
    assert "resumed from" in resumed.stdout
    straight, killed = adapter(project / "runs" / "straight"), adapter(project / "runs" / "killed")
    assert all(torch.equal(straight[k], killed[k]) for k in straight)
