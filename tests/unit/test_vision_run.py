"""`tunery train` with `method: vision` end to end on a tiny random Idefics3 (SmolVLM's class) saved as a
local folder: the run folder, exact resume (bitwise equal to an uninterrupted run), the NaN guard."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from test_vision_train import write_data
from tunery import faults
from tunery.config.schema import TrainConfig
from tunery.runfolder import RunFolder
from tunery.trainers.run import run_training
from vlm_helpers import FAMILIES, save_tiny


@pytest.fixture(scope="module")
def idefics3_dir(tmp_path_factory, smol_tokenizer):
    return save_tiny("idefics3", smol_tokenizer, tmp_path_factory.mktemp("tiny-idefics3"))


@pytest.fixture()
def family_dir(request, tmp_path_factory, smol_tokenizer, monkeypatch):
    """A tiny model folder of the family; Qwen2-VL's processor is handed over in memory (transformers
    loads it from a folder only with torchvision, which is not installed here)."""
    family = request.param
    folder = save_tiny(family, smol_tokenizer, tmp_path_factory.mktemp(f"tiny-{family}"))
    if family == "qwen2_vl":
        processor = FAMILIES[family](smol_tokenizer)[1]
        monkeypatch.setattr("tunery.vision.model.load_processor", lambda spec: processor)
    return family, folder


def config(folder, data, vision=None, **training) -> TrainConfig:
    settings = {"max_steps": 4, "batch_size": 2, "lr": 1e-2, "save_every": 1, "eval_every": 2, "threads": 1,
                "warmup_ratio": 0.0, **training}
    return TrainConfig(method="vision", base_model=str(folder), data={"train": [str(data)], "val_split": 0.25},
                       lora={"dropout": 0.0, "rank": 4}, vision={"train": "projector", **(vision or {})},
                       training=settings)


def adapter_weights(root):
    return load_file(str(root / "adapter" / "adapter_model.safetensors"))


PROJECTOR_NAMES = {"idefics3": "connector", "llava": "multi_modal_projector", "qwen2_vl": "merger"}


@pytest.mark.parametrize("family_dir", sorted(FAMILIES), indirect=True)
def test_run_folder_and_bitwise_resume(family_dir, tmp_path):
    family, folder = family_dir
    check_bitwise_resume(family, config(folder, write_data(tmp_path)), tmp_path)


def test_bitwise_resume_across_the_projector_stage(idefics3_dir, tmp_path):
    """Cut at step 2 of a run whose first 3 steps train the projector alone, at its own learning rate:
    the resumed run crosses into the second stage and ends bitwise equal to the uninterrupted one. (One
    validation, at the end: the final weights are the last step's, which the second stage moved.)"""
    cfg = config(idefics3_dir, write_data(tmp_path), {"projector_first_steps": 3, "projector_lr": 3e-2},
                 eval_every=100)
    check_bitwise_resume("idefics3", cfg, tmp_path)


def check_bitwise_resume(family: str, cfg: TrainConfig, tmp_path) -> None:
    whole = run_training(cfg, tmp_path / "whole", log=lambda _: None)
    assert whole["status"] == "finished" and whole["step"] == 4
    assert (tmp_path / "whole" / "processor" / "processor_config.json").is_file()
    weights = adapter_weights(tmp_path / "whole")
    assert any(PROJECTOR_NAMES[family] in name for name in weights)  # vision.train: projector is saved with the adapter

    calls = []
    stopped = run_training(cfg, tmp_path / "cut", should_stop=lambda: len(calls.append(1) or calls) >= 2,
                           log=lambda _: None)
    assert stopped["status"] == "stopped" and stopped["step"] == 2
    torch.manual_seed(999)  # the resumed run must not depend on the RNG state it starts with
    resumed = run_training(cfg, tmp_path / "cut", resume=True, log=lambda _: None)
    assert resumed["status"] == "finished" and resumed["step"] == 4
    again = adapter_weights(tmp_path / "cut")
    assert weights.keys() == again.keys()
    for name in weights:
        assert torch.equal(weights[name], again[name]), name
    losses = [m["loss"] for m in RunFolder(tmp_path / "whole").read_metrics() if m.get("kind") == "train"]
    assert losses == [m["loss"] for m in RunFolder(tmp_path / "cut").read_metrics() if m.get("kind") == "train"]


def test_nan_step_is_skipped(idefics3_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(faults.ENV, "nan:loss:1")  # the first training forward's logits are NaN
    monkeypatch.setattr(faults, "_hits", {})
    cfg = config(idefics3_dir, write_data(tmp_path), max_steps=3, eval_every=100)
    info = run_training(cfg, tmp_path / "run", log=lambda _: None)
    assert info["status"] == "finished" and info["step"] == 3
    train = [m for m in RunFolder(tmp_path / "run").read_metrics() if m.get("kind") == "train"]
    assert train[0]["loss"] is None and all(m["loss"] is not None for m in train[1:])
    assert all(torch.isfinite(t).all() for t in adapter_weights(tmp_path / "run").values())
