"""The composed offline model `smollm2-135m-vision` end to end through the real command line: built on
first use (or read from the cache), `tunery data check` on image records, a few steps of projector +
LoRA training, and the run folder it leaves (adapter with the projector, processor/)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from cli_helpers import run_tunery
from vlm_helpers import write_png

pytestmark = pytest.mark.e2e
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}


def write_records(folder):
    lines = []
    for name, rgb in COLOURS.items():
        write_png(folder / f"{name}.png", rgb, (48, 40))
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": [{"type": "image", "path": f"{name}.png"},
                                         {"type": "text", "text": "What colour is the picture?"}]},
            {"role": "assistant", "content": name.capitalize() + "."}]}))
    (folder / "colours.jsonl").write_text("\n".join(lines) + "\n")


def test_composed_model_trains_a_few_steps(tmp_path):
    write_records(tmp_path)
    check = run_tunery("data", "check", "colours.jsonl", "--model", "smollm2-135m-vision", "--json", cwd=tmp_path,
                       timeout=900)
    report = json.loads(check.stdout)
    assert report["ok"] and report["stats"]["train"]["records"] == 4
    (tmp_path / "vision.yaml").write_text(
        "method: vision\nbase_model: smollm2-135m-vision\n"
        "data: {train: [colours.jsonl], max_length: 128}\n"
        "vision: {train: projector}\n"
        "training: {max_steps: 3, batch_size: 2, lr: 1.0e-3, threads: 1, eval_every: 100}\n")
    run_tunery("train", "vision.yaml", cwd=tmp_path, timeout=1800)
    run = tmp_path / "runs" / "vision"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["step"] == 3 and info["method"] == "vision"
    weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert any("multi_modal_projector" in k for k in weights) and any("lora_B" in k for k in weights)
    assert not any("vision_backbone" in k for k in weights)  # the backbone stays frozen, never saved
    assert (run / "processor" / "tunery_processor.json").is_file()
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("kind") == "train"]
    assert len(losses) == 3 and all(loss is not None and loss > 0 for loss in losses)
