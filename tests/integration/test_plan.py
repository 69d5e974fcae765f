"""`tunery plan` estimates against what a real training run then measures."""

from __future__ import annotations

import json

import pytest

from cli_helpers import REPO, run_tunery, write_chat_jsonl


def plan_then_train(project, config: str, *overrides: str) -> tuple[dict, dict]:
    planned = run_tunery("plan", config, *overrides, "--json", cwd=project, timeout=600)
    estimate = json.loads(planned.stdout)
    run_tunery("train", config, *overrides, "output.dir=" + str(project / "runs"), "output.name=measured",
               cwd=project, timeout=900)
    info = json.loads((project / "runs" / "measured" / "run.json").read_text())
    return estimate, info


def test_plan_on_the_tiny_model_matches_a_measured_run(tmp_path, tiny_model_dir):
    write_chat_jsonl(tmp_path / "train.jsonl", 40)
    (tmp_path / "run.yaml").write_text(
        f"base_model: {tiny_model_dir}\n"
        "data: {train: [train.jsonl], val_split: 0.1, max_length: 64}\n"
        "training: {max_steps: 4, batch_size: 8}\n")
    estimate, info = plan_then_train(tmp_path, "run.yaml")
    assert estimate["fits"] is True and estimate["steps"] == 4
    assert estimate["trainable_params"] == info["trainable_params"]
    assert abs(estimate["peak_mb"] - info["peak_memory_mb"]) / info["peak_memory_mb"] < 0.25


def test_plan_refuses_what_cannot_fit_and_suggests_a_change(tmp_path, tiny_model_dir):
    write_chat_jsonl(tmp_path / "train.jsonl", 40)
    (tmp_path / "run.yaml").write_text(
        f"base_model: {tiny_model_dir}\ndata: {{train: [train.jsonl]}}\ntraining: {{max_steps: 2, batch_size: 8}}\n")
    from tunery.config.load import validate
    from tunery.trainers.preflight import Estimate, suggest

    cfg = validate({"base_model": "x", "adapter": "full", "data": {"train": ["t"]},
                    "training": {"batch_size": 8}})
    tight = Estimate(100, 100, 10, 800.0, 1000, base_mb=500, optimizer_mb=10, fixed_mb=10,
                     activation_mb_per_1k=1000.0, peak_mb=1520, available_mb=1200, seconds_per_step=1,
                     total_seconds=10)
    assert not tight.fits
    # activations 1000 MiB, room 0.9 x 1200 - 520 = 560 MiB: halving the piece is enough
    ideas = suggest(cfg, tight)
    assert ideas[0].startswith("training.chunk_tokens=500 (the same update in smaller pieces")
    assert any(i.startswith("adapter=lora") for i in ideas)
    # without packing, the same halving is a smaller micro-batch with more accumulation
    padded = cfg.model_copy(update={"training": cfg.training.model_copy(update={"packing": False})})
    assert suggest(padded, tight)[0].startswith("training.batch_size=4 training.grad_accum=2")


@pytest.mark.e2e
def test_plan_on_the_embedded_model_matches_a_measured_run(tmp_path):
    config = str(REPO / "examples" / "quickstart" / "config.yaml")
    estimate, info = plan_then_train(tmp_path, config, "training.max_steps=2", "training.eval_every=2")
    assert estimate["trainable_params"] == 4_884_480
    assert abs(estimate["peak_mb"] - info["peak_memory_mb"]) / info["peak_memory_mb"] < 0.25
