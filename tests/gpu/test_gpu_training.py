"""The gpu tier (marker `gpu`, skipped without CUDA, run by scripts/gpu_tests.sh): training really runs
on the GPU in bf16 and as QLoRA with bf16 compute, a killed CUDA run resumes bitwise, one process joins
an NCCL process group and trains as a lone process does, and a GPU-trained run exports and verifies.

Each test asserts that CUDA did the work (the device's peak allocated memory), so a trainer that
silently stays on the CPU fails here instead of passing slowly."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import REPO, kill_tree, run_tunery
from gpu_helpers import STEPS, cuda_peak_mb, make_project, settings, train_losses

pytestmark = pytest.mark.gpu
WORKER = Path(__file__).resolve().parent / "nccl_one_rank.py"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("gpu"))


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def train_in_process(cfg_dict: dict, root: Path) -> dict:
    from tunery.config.load import validate
    from tunery.trainers.run import run_training

    torch.cuda.reset_peak_memory_stats()
    return run_training(validate(cfg_dict), root, log=print)


def assert_trained(run: Path, info: dict) -> None:
    assert info["status"] == "finished" and info["step"] == STEPS
    losses = train_losses(run)
    assert len(losses) == STEPS and all(loss is not None and math.isfinite(loss) for loss in losses)
    weights = adapter(run)
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
    assert all(float(t.abs().max()) > 0 for k, t in weights.items() if "lora_B" in k)  # B starts at zero


def test_a_bf16_lora_run_trains_on_the_gpu(project, tmp_path):
    info = train_in_process(settings(project, dtype="bfloat16"), tmp_path / "bf16")
    assert_trained(tmp_path / "bf16", info)
    # The tiny model is ~13 MB in bf16; with activations and AdamW moments the device must have held more.
    assert cuda_peak_mb() > 5 and info["peak_memory_mb"] > 5


def test_qlora_with_bf16_compute_trains_on_the_gpu(project, tmp_path):
    pytest.importorskip("bitsandbytes", reason="carry the bitsandbytes wheel in .whl/ (scripts/gpu_tests.sh)")
    lora = settings(project)["lora"] | {"qlora_compute_dtype": "bfloat16"}
    info = train_in_process(settings(project, adapter="qlora", lora=lora), tmp_path / "qlora")
    assert_trained(tmp_path / "qlora", info)
    assert cuda_peak_mb() > 1

    from tunery.inference import load_for_inference
    from tunery.models import quant

    model, _ = load_for_inference(tmp_path / "qlora")  # rebuilt as trained: 4-bit base, on the GPU
    assert quant.count_4bit_layers(model) == 14
    layer = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert layer.weight.is_cuda and layer.compute_dtype == torch.bfloat16


def test_a_killed_cuda_run_resumes_bitwise_equal(project):
    run_tunery("train", "run.yaml", "output.name=straight", cwd=project)
    killed = project / "runs" / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "tunery.cli.main", "train", "run.yaml", "output.name=killed",
                             "--resume"], cwd=project, env=os.environ | {"PYTHONUNBUFFERED": "1"},
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "step-0000003" / "COMPLETE"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists(), "no checkpoint at step 3"
    kill_tree(proc)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed = run_tunery("train", "run.yaml", "output.name=killed", "--resume", cwd=project)
    assert "resumed from" in resumed.stdout
    straight, again = adapter(project / "runs" / "straight"), adapter(killed)
    assert straight.keys() == again.keys() and straight
    assert all(torch.equal(straight[k], again[k]) for k in straight)
    info = json.loads((killed / "run.json").read_text())
    assert info["peak_memory_mb"] > 1  # the resumed process trained on the GPU too


def test_one_process_in_an_nccl_group_trains_as_a_lone_process(project, tmp_path):
    """torchrun with one worker: NCCL carries the GPU tensors (gradients), gloo the CPU figures; with a
    world of one the sums are identities, so the adapter equals a lone process's to float rounding."""
    lone = tmp_path / "lone"
    train_in_process(settings(project), lone)
    group = tmp_path / "group"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                           str(WORKER), str(project / "run.yaml"), str(group)],
                          cwd=project, env=os.environ | {"PYTHONPATH": f"{REPO / 'src'}:{REPO / 'tests'}:"
                                                                        + os.environ.get("PYTHONPATH", "")},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "nccl" in report["backend"] and report["gradient_device"] == "cuda" and report["cuda_peak_mb"] > 1
    expected, got = adapter(lone), adapter(group)
    assert expected.keys() == got.keys() and expected
    for name in expected:  # same kernels, same order: equal up to rounding of nondeterministic kernels
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)


def test_a_gpu_trained_run_exports_to_gguf_and_verifies(project):
    pytest.importorskip("gguf", reason="carry the gguf wheel in .whl/ (scripts/gpu_tests.sh)")
    run_tunery("train", "run.yaml", "output.name=exported", "training.save_every=100", cwd=project)
    run = project / "runs" / "exported"
    assert json.loads((run / "run.json").read_text())["peak_memory_mb"] > 1
    out = run_tunery("export", str(run), "--format", "gguf", "--type", "f16", "--out", "gguf", "--json", cwd=project)
    record = json.loads(out.stdout)
    assert record["passed"] is True, record["failures"]
    assert record["tokenizer"]["stop_ids"] == [2] and record["tokenizer"]["probe_tokens_identical"] is True
    assert record["greedy_identical"] is True
    assert record["logits"]["max_abs_diff"] <= 5e-3 * max(record["logits"]["max_abs_logit"], 1.0)
    assert (project / "gguf" / "exported-f16.gguf").stat().st_size == record["size_bytes"]
