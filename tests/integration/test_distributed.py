"""Data parallelism through torchrun on CPU (gloo): 2 processes x batch 4 == 1 process x batch 8, and a
2-process run killed with kill -9 resumes exactly; the same for sharded runs (training.fsdp), whose
checkpoints and final model are those of a 1-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cli_helpers import descendants, kill_tree, run_tunery, write_chat_jsonl
from conftest import make_tiny_model


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


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, killed but not yet reaped by its parent, counts as dead)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def straight_then_killed_and_resumed(project, args: list[str]):
    """Train `args` as run "straight"; train them again as "killed", kill -9 every process once step 3
    is checkpointed, then resume it to the end. Returns the resume's completed process."""
    run_tunery("train", *args, "output.name=straight", cwd=project, timeout=600)
    cmd = [sys.executable, "-m", "tunery.cli.main", "train", *args, "output.name=killed", "--resume"]
    proc = subprocess.Popen(cmd, cwd=project, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    marker = project / "runs" / "killed" / "checkpoints" / "step-0000003" / "COMPLETE"
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "no checkpoint at step 3"
    workers = descendants(proc.pid)
    assert len(workers) >= 3, "expected torchrun and its workers below the launcher"  # the tree is found
    kill_tree(proc)  # the launcher, torchrun and both workers: only what this test started
    proc.wait()
    deadline = time.monotonic() + 60  # a killed process takes a moment to be torn down on a busy machine
    while [p for p in workers if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in workers if alive(p)], "a worker survived the kill"
    resumed = run_tunery("train", *args, "output.name=killed", "--resume", cwd=project, timeout=600)
    assert "resumed from" in resumed.stdout
    return resumed


def test_two_process_run_resumes_exactly_after_kill_9(project):
    # 30 steps, so that the kill lands while the run is still going
    args = ["run.yaml", "lora.dropout=0.1", "training.batch_size=4", "training.max_steps=30", "--nproc", "2"]
    straight_then_killed_and_resumed(project, args)
    straight, killed = adapter(project / "runs" / "straight"), adapter(project / "runs" / "killed")
    assert all(torch.equal(straight[k], killed[k]) for k in straight)


# --- FSDP (training.fsdp): full fine-tuning sharded over 2 processes --------------------------------

# 25 examples in micro-batches of 8 leave one of 1 example per epoch, so rank 1 has nothing to run
# there; 40-token pieces give the ranks different numbers of passes; 9 validation examples give them
# 2 and 1 evaluation batches. The sharded loop must keep the ranks' collectives in step through all of it.
FULL = {"max_steps": 6, "lr": 1.0e-3, "grad_accum": 2, "chunk_tokens": 40, "eval_every": 3,
        "save_every": 1, "keep_checkpoints": 10, "threads": 1}
SHARDED = ("training.batch_size=4", "training.fsdp=true", "--nproc", "2")
# 2 x 4 sums the same per-token gradients as 1 x 8 in another order (per rank, then reduce-scatter):
# equal to float32 rounding. Measured here: weights within 6e-8, losses within 1e-7 relative.
RTOL, ATOL = 1e-4, 1e-6


@pytest.fixture(scope="module")
def full_project(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("fsdp")
    write_chat_jsonl(root / "train.jsonl", 25)
    write_chat_jsonl(root / "val.jsonl", 9, offset=100)
    (root / "run.yaml").write_text(yaml.safe_dump({
        "base_model": str(tiny_model_dir), "adapter": "full",
        "data": {"train": ["train.jsonl"], "validation": ["val.jsonl"], "max_length": 64},
        "training": FULL,
    }))
    return root


@pytest.fixture(scope="module")
def sharded_runs(full_project):
    """runs/one: 1 process x batch 8, unsharded; runs/fsdp: 2 sharded processes x batch 4."""
    run_tunery("train", "run.yaml", "output.name=one", "training.batch_size=8", cwd=full_project)
    two = run_tunery("train", "run.yaml", "output.name=fsdp", *SHARDED, cwd=full_project, timeout=600)
    assert "sharded over 2 processes" in two.stdout
    return full_project / "runs"


def final_model(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_sharded_processes_of_batch_4_equal_one_process_of_batch_8(sharded_runs, smol_tokenizer):
    one, two = final_model(sharded_runs / "one"), final_model(sharded_runs / "fsdp")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=RTOL, atol=ATOL)
    start = make_tiny_model(len(smol_tokenizer)).state_dict()
    moved = max(float((one[name] - start[name]).abs().max()) for name in one)
    assert moved > 100 * ATOL  # the weights did move: the equality above is not the initial weights'
    one_m, two_m = metrics(sharded_runs / "one"), metrics(sharded_runs / "fsdp")
    assert [m["kind"] for m in one_m] == [m["kind"] for m in two_m]  # one set of lines: rank 0 writes
    assert sum(m["kind"] == "eval" for m in two_m) == 2
    for a, b in zip(one_m, two_m):
        for key in ("loss", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-6)
        if "grad_norm" in a:  # fp32 norms of a 1.5M-element gradient, summed whole or in halves: 2e-5 apart
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


def test_sharded_checkpoints_and_final_model_are_those_of_one_process(sharded_runs):
    one_ckpts, two_ckpts = sharded_runs / "one" / "checkpoints", sharded_runs / "fsdp" / "checkpoints"
    assert sorted(p.name for p in one_ckpts.iterdir()) == sorted(p.name for p in two_ckpts.iterdir())
    for folder in sorted(one_ckpts.iterdir()):
        for name in ("trainable.safetensors", "optimizer.safetensors"):
            a, b = load_file(str(folder / name)), load_file(str(two_ckpts / folder.name / name))
            a, b = ({k: v for k, v in t.items() if not k.startswith("rng.")} for t in (a, b))
            assert a.keys() == b.keys() and len(a) > 0
            for key in a:  # full tensors under the 1-process names: the same files, equal to rounding
                assert (b[key].shape, b[key].dtype) == (a[key].shape, a[key].dtype), key
                torch.testing.assert_close(b[key], a[key], rtol=RTOL, atol=ATOL)
        state_a = json.loads((folder / "state.json").read_text())
        state_b = json.loads((two_ckpts / folder.name / "state.json").read_text())
        assert state_b["optimizer"] == state_a["optimizer"]
    # The final model is an ordinary transformers folder, tied head stored once, as unsharded.
    from tunery.models.load import load_model

    config = json.loads((sharded_runs / "fsdp" / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    saved = final_model(sharded_runs / "fsdp")
    loaded = load_model(str(sharded_runs / "fsdp" / "model")).state_dict()
    assert "lm_head.weight" not in saved and torch.equal(loaded["lm_head.weight"], saved["model.embed_tokens.weight"])
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name


def test_one_process_resumes_a_sharded_checkpoint(sharded_runs, tmp_path):
    """The sharded run's step-3 checkpoint, resumed by one unsharded process, ends where runs/one does."""
    from tunery.config.load import validate
    from tunery.models import adapters
    from tunery.runfolder import RunFolder
    from tunery.trainers import loop, run

    saved = yaml.safe_load((sharded_runs / "fsdp" / "config.yaml").read_text())
    saved["training"] |= {"batch_size": 8, "fsdp": False, "preflight": False}
    s = run.prepare(validate(saved), log=lambda _text: None)
    folder = sharded_runs / "fsdp" / "checkpoints" / "step-0000003"
    st = loop.resume(s, folder)
    assert st.step == 3 and len(s.optimizer.state) == len(list(s.model.parameters()))
    checkpoint = load_file(str(folder / "trainable.safetensors"))
    assert all(torch.equal(p, checkpoint[n]) for n, p in adapters.trainable_state(s.model).items())
    st, reason = loop.train(s, RunFolder(tmp_path / "cross"), st, lambda: False)
    assert reason == "finished" and st.step == 6
    one = final_model(sharded_runs / "one")
    for name, param in adapters.trainable_state(s.model).items():
        torch.testing.assert_close(param, one[name], rtol=RTOL, atol=ATOL)


def test_fsdp_with_one_process_trains_unsharded_and_refuses_qlora(smol_tokenizer):
    from loop_helpers import make_loop, synthetic_rows, tiny_config
    from tunery.config.load import validate
    from tunery.errors import TuneryError
    from tunery.trainers import fsdp

    cfg = tiny_config(fsdp=True).model_copy(update={"adapter": "full"})
    s = make_loop(smol_tokenizer, cfg, synthetic_rows(4))
    assert not fsdp.is_sharded(s.model) and s.strategy.name == "single"
    with pytest.raises(TuneryError, match="training.fsdp cannot shard qlora"):
        validate(cfg.model_dump(mode="json") | {"adapter": "qlora"})


def test_sharded_run_resumes_exactly_after_kill_9(full_project):
    args = ["run.yaml", "training.max_steps=20", *SHARDED]  # 20 steps: the kill lands mid-run
    straight_then_killed_and_resumed(full_project, args)
    straight, killed = final_model(full_project / "runs" / "straight"), final_model(full_project / "runs" / "killed")
    assert straight.keys() == killed.keys()
    assert all(torch.equal(straight[k], killed[k]) for k in straight)
    losses = [[m["loss"] for m in metrics(full_project / "runs" / name) if m["kind"] == "train"]
              for name in ("straight", "killed")]
    assert len(losses[0]) == 20 and losses[0] == losses[1]
