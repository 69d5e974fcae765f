"""What the loop promises holds for the preference and RL methods too, through the real command line:
kill -9 and resume bitwise, 2 data-parallel processes equal to one, and `tunery plan` estimates."""

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

from cli_helpers import run_tunery
from pref_helpers import pair, write_jsonl

METHODS = {
    "dpo": "preference: {beta: 0.1}\n",
    "rl": "rl: {graders: [max_words:3, numeric], max_new_tokens: 6, group_size: 2, updates_per_generation: 2}\n",
}


@pytest.fixture()
def project(tmp_path, tiny_model_dir):
    write_jsonl(tmp_path / "pairs.jsonl", [pair(i) for i in range(24)])
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"What is {i} plus {i + 1}?", "answer": str(2 * i + 1)}
                                             for i in range(24)])
    for method, section in METHODS.items():
        data = "pairs.jsonl" if method == "dpo" else "prompts.jsonl"
        (tmp_path / f"{method}.yaml").write_text(
            f"base_model: {tiny_model_dir}\nmethod: {method}\n"
            f"data: {{train: [{data}], max_length: 64}}\n"
            "lora: {rank: 4, alpha: 8, dropout: 0.1}\n"
            "training: {max_steps: 12, lr: 1.0e-2, eval_every: 100, save_every: 1, threads: 1, batch_size: 2}\n"
            + section)
    return tmp_path


def adapter(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def train_lines(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "train"]


@pytest.mark.parametrize("method", ["dpo", "rl"])
def test_a_killed_run_resumes_bitwise(project, method):
    run_tunery("train", f"{method}.yaml", "output.name=straight", cwd=project, timeout=600)
    cmd = [sys.executable, "-m", "tunery.cli.main", "train", f"{method}.yaml", "output.name=killed"]
    proc = subprocess.Popen(cmd, cwd=project, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marker = project / "runs" / "killed" / "checkpoints" / "step-0000005" / "COMPLETE"
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), "no checkpoint at step 5"
    os.killpg(proc.pid, signal.SIGKILL)  # the process group this test started, nothing else
    proc.wait()
    resumed = run_tunery("train", f"{method}.yaml", "output.name=killed", "--resume", cwd=project, timeout=600)
    assert "resumed from" in resumed.stdout
    straight, killed = adapter(project / "runs" / "straight"), adapter(project / "runs" / "killed")
    assert straight.keys() == killed.keys() and all(torch.equal(straight[k], killed[k]) for k in straight)
    a, b = train_lines(project / "runs" / "straight"), train_lines(project / "runs" / "killed")
    figure = "margin" if method == "dpo" else "reward"
    assert [m[figure] for m in a] == [m[figure] for m in b] and len(a) == 12


def test_dpo_on_two_processes_equals_one_process(project):
    run_tunery("train", "dpo.yaml", "output.name=one", "training.batch_size=4", "lora.dropout=0",
               "training.max_steps=4", cwd=project, timeout=600)
    run_tunery("train", "dpo.yaml", "output.name=two", "training.batch_size=2", "lora.dropout=0",
               "training.max_steps=4", "--nproc", "2", cwd=project, timeout=600)
    one, two = adapter(project / "runs" / "one"), adapter(project / "runs" / "two")
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6)
    a, b = train_lines(project / "runs" / "one"), train_lines(project / "runs" / "two")
    assert [m["trained_pairs"] for m in b] == [4] * 4
    assert [m["accuracy"] for m in a] == [m["accuracy"] for m in b]


def test_rl_runs_on_two_processes_and_each_samples_its_own_prompts(project):
    run_tunery("train", "rl.yaml", "output.name=two", "training.max_steps=2", "--nproc", "2", cwd=project,
               timeout=600)
    lines = train_lines(project / "runs" / "two")
    assert len(lines) == 2 and all(m["trained_tokens"] > 0 for m in lines)


@pytest.mark.parametrize("method", ["dpo", "rl"])
def test_plan_estimates_preference_and_rl_runs(project, method):
    planned = run_tunery("plan", f"{method}.yaml", "--json", cwd=project, timeout=600)
    estimate = json.loads(planned.stdout)
    assert estimate["fits"] is True and estimate["steps"] == 12 and estimate["peak_mb"] > estimate["base_mb"] > 0
    # RL's estimate sizes the longest answers it could sample: a group of 2, 6 new tokens each.
    assert estimate["max_micro_tokens"] > 0 and estimate["seconds_per_step"] > 0
