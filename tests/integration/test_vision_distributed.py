"""`method: vision` with data parallelism through torchrun on CPU (gloo), as text runs are tested in
test_distributed.py: 2 processes x batch 4 == 1 process x batch 8 (same losses, same adapter and
projector), on a tiny random LLaVA saved as a local folder, with the projector-first stage crossed."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cli_helpers import run_tunery
from vlm_helpers import save_tiny, write_png

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}


@pytest.fixture()
def vision_project(tmp_path, smol_tokenizer):
    """16 image records (the 4 colours at 4 sizes) and a run config; steps 1-2 train the projector alone."""
    model_dir = save_tiny("llava", smol_tokenizer, tmp_path / "tiny-llava")
    lines = []
    for i in range(16):
        name, rgb = list(COLOURS.items())[i % 4]
        write_png(tmp_path / f"{i}.png", rgb, (28 + 4 * (i // 4), 40))
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": [{"type": "image", "path": f"{i}.png"}, {"type": "text", "text": "Which colour?"}]},
            {"role": "assistant", "content": name}]}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        "method": "vision", "base_model": str(model_dir),
        "data": {"train": ["train.jsonl"], "max_length": 64},
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
        "vision": {"train": "projector", "projector_first_steps": 2, "projector_lr": 2.0e-2},
        "training": {"max_steps": 4, "lr": 1.0e-2, "warmup_ratio": 0.0, "eval_every": 100, "save_every": 2,
                     "threads": 1, "preflight": False},
    }))
    return tmp_path


def adapter(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def test_two_vision_processes_of_batch_4_equal_one_process_of_batch_8(vision_project):
    run_tunery("train", "run.yaml", "output.name=one", "training.batch_size=8", cwd=vision_project, timeout=600)
    two = run_tunery("train", "run.yaml", "output.name=two", "training.batch_size=4", "--nproc", "2",
                     cwd=vision_project, timeout=600)
    assert "launching 2 processes" in two.stdout
    one_w, two_w = adapter(vision_project / "runs" / "one"), adapter(vision_project / "runs" / "two")
    assert one_w.keys() == two_w.keys()
    assert any("multi_modal_projector" in name for name in one_w)  # the projector is saved with the adapter
    moved = max(float(w.abs().max()) for name, w in one_w.items() if "lora_B" in name)
    assert moved > 1e-4  # the LoRA did learn after the projector stage: the equality below is not of zeros
    for name in one_w:  # summation order differs between the layouts: equal to float32 rounding
        torch.testing.assert_close(two_w[name], one_w[name], rtol=1e-4, atol=1e-6)
    one_m = [json.loads(line) for line in (vision_project / "runs" / "one" / "metrics.jsonl").read_text().splitlines()]
    two_m = [json.loads(line) for line in (vision_project / "runs" / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(one_m) == len(two_m)  # one set of lines: only rank 0 writes
    for a, b in zip(one_m, two_m):
        for key in ("loss", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4)
