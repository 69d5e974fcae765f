"""`tunery merge` and `tunery export` of a vision run (tiny Idefics3, LoRA + trained projector): the merged
folder holds the processor, loads with AutoModelForImageTextToText alone and gives the unmerged run's
logits on an image; GGUF formats are refused saying what GGUF readers take."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from test_vision_eval import user_turn, vision_run  # noqa: F401  (the fixture)
from tunery.errors import TuneryError
from tunery.export.exporter import export_run
from tunery.export.merge import merge_run
from tunery.vision.model import load_processor, load_vlm


def image_logits(model, processor, held) -> torch.Tensor:
    turn, image = user_turn(held.parent / "grey.png")
    text = processor.apply_chat_template([turn], tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[[image]], return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits[0]


def test_merged_vision_folder_loads_alone_with_the_runs_logits(vision_run, tmp_path):  # noqa: F811
    from transformers import AutoModelForImageTextToText, AutoProcessor

    run, base, held = vision_run
    record = merge_run(run, tmp_path / "merged", log=lambda _: None)
    out = tmp_path / "merged"
    assert record["method"] == "vision" and record["logits_vs_unmerged"]["argmax_agrees"]
    assert record["logits_vs_unmerged"]["max_abs_diff"] < 1e-4
    for saved in (run / "processor").iterdir():  # the run's processor, file for file
        assert (out / saved.name).read_bytes() == saved.read_bytes(), saved.name
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    unmerged = PeftModel.from_pretrained(load_vlm(str(base)), str(run / "adapter")).eval()
    plain = load_vlm(str(base))
    got, want = image_logits(merged, processor, held), image_logits(unmerged, load_processor(str(run / "processor")), held)
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(image_logits(plain, processor, held), want, atol=1e-4)  # the run changed something
    again = merge_run(run, out, log=lambda _: None)
    assert again.get("skipped") is True


def test_vision_export_hf_and_gguf_refused(vision_run, tmp_path):  # noqa: F811
    run, _, _ = vision_run
    for fmt in ("gguf", "gguf-lora", "ollama"):
        with pytest.raises(TuneryError) as caught:
            export_run(run, fmt, tmp_path / fmt, log=lambda _: None)
        text = str(caught.value)
        assert f"not as {fmt}" in text and "mmproj" in text and "--format hf" in text
        assert not (tmp_path / fmt).exists()
    record = export_run(run, "hf", tmp_path / "hf", log=lambda _: None)
    assert record["passed"] and record["format"] == "hf"
    assert json.loads((tmp_path / "hf" / "merge.json").read_text())["method"] == "vision"
