"""The NaN guard through `run_training` (the public entry point of `tunery train`): a step whose loss is
finite but whose gradient is NaN skips the update, and a skipped step leaves the weights and the AdamW
moments bitwise unchanged."""

from __future__ import annotations

import math

import torch
from safetensors.torch import load_file

from cli_helpers import write_chat_jsonl
from tunery.config.load import validate
from tunery.runfolder import RunFolder
from tunery.trainers.run import run_training

POISONED_STEP = 2


def nan_gradient_on_training_pass(number: int):
    """A global forward hook (torch's own API, nothing in the trainer) that, on the `number`-th forward
    pass of the decoder in training mode, makes the gradient flowing back into its output NaN. The
    forward values are untouched, so the loss stays finite; every adapter weight below gets a NaN
    gradient. Evaluation and the preflight's probes run in eval mode and are not counted."""
    passes = []

    def hook(module, _args, output):
        if type(module).__name__ != "LlamaModel" or not module.training:
            return None
        passes.append(1)
        if len(passes) == number:
            output.last_hidden_state.register_hook(lambda grad: torch.full_like(grad, float("nan")))
        return None

    return torch.nn.modules.module.register_module_forward_hook(hook), passes


def test_a_nan_only_in_the_gradient_skips_the_update_and_changes_nothing(tmp_path, tiny_model_dir, capsys):
    write_chat_jsonl(tmp_path / "train.jsonl", 8)
    cfg = validate({
        "base_model": str(tiny_model_dir),
        "data": {"train": [str(tmp_path / "train.jsonl")], "max_length": 64},
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
        # One forward pass per step (2 short examples, one packed piece), a checkpoint after every step.
        "training": {"max_steps": 4, "batch_size": 2, "lr": 1e-2, "warmup_ratio": 0.0, "save_every": 1,
                     "keep_checkpoints": 10, "max_bad_steps": 2, "threads": 1},
    })
    handle, passes = nan_gradient_on_training_pass(POISONED_STEP)
    try:
        info = run_training(cfg, tmp_path / "run", log=print)
    finally:
        handle.remove()
    assert len(passes) == 4 and info["status"] == "finished" and info["step"] == 4
    printed = capsys.readouterr().out
    assert f"step {POISONED_STEP}: loss " in printed and "/ grad norm nan: not finite, update skipped" in printed

    train = [m for m in RunFolder(tmp_path / "run").read_metrics() if m["kind"] == "train"]
    poisoned = train[POISONED_STEP - 1]
    assert poisoned["step"] == POISONED_STEP
    assert poisoned["loss"] is not None and math.isfinite(poisoned["loss"])  # only the gradient is NaN
    assert poisoned["grad_norm"] is None  # NaN, written as null
    assert all(m["grad_norm"] is not None and m["grad_norm"] > 0 for m in train if m is not poisoned)

    def checkpoint(step):
        folder = tmp_path / "run" / "checkpoints" / f"step-{step:07d}"
        moments = {k: v for k, v in load_file(str(folder / "optimizer.safetensors")).items() if k.startswith("opt.")}
        return load_file(str(folder / "trainable.safetensors")), moments

    (w1, m1), (w2, m2), (w3, _) = checkpoint(1), checkpoint(2), checkpoint(3)
    assert w1.keys() == w2.keys() and len(w1) > 0 and len(m1) > 0
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # the skipped step changed no weight...
    assert m1.keys() == m2.keys() and all(torch.equal(m1[k], m2[k]) for k in m1)  # ...and no moment
    assert all(torch.isfinite(t).all() for t in w2.values())
    assert sum(not torch.equal(w2[k], w3[k]) for k in w2) == len(w2)  # the next step updates all again
