"""DPO, ORPO, KTO and reward models on the shared loop, on the tiny model: the first step's loss by hand,
the adapter-off reference against a frozen copy, one forward for both sides, exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from loop_helpers import same_trainable_weights, straight_and_resumed
from pref_helpers import pairs_file, pref_config, write_jsonl
from tunery.models.forward import sequence_logps
from tunery.models.load import load_model
from tunery.runfolder import RunFolder
from tunery.trainers import loop
from tunery.trainers.methods.preference import reference_mode
from tunery.trainers.run import prepare, run_training

QUIET = dict(log=lambda _text: None)


def metrics(root, kind="train"):
    return [m for m in RunFolder(root).read_metrics() if m["kind"] == kind]


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_dpo_starts_at_log_2_and_separates_the_answers(tmp_path, tiny_model_dir, adapter):
    """At step 1 the policy is the reference (LoRA's B starts at zero; full: the reference is the
    loaded weights), so every pair's loss is -log sigmoid(0) = log 2 and the margin is 0."""
    cfg = pref_config(tiny_model_dir, pairs_file(tmp_path, 12), adapter=adapter, data={"val_split": 0.25},
                      training={"max_steps": 6})
    run_training(cfg, tmp_path / "run", **QUIET)
    train = metrics(tmp_path / "run")
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and train[0]["margin"] == 0
    assert train[0]["trained_pairs"] == 2 and train[-1]["loss"] < math.log(2)
    evals = metrics(tmp_path / "run", "eval")
    assert [e["step"] for e in evals] == [2, 4, 6]
    margins = [e["val_margin"] for e in evals]
    assert margins == sorted(margins) and margins[0] > 0 and evals[-1]["val_accuracy"] == 1.0
    cached = list((tmp_path / "run" / "cache").glob("reference-*.safetensors"))
    assert len(cached) == (1 if adapter == "full" else 0)  # LoRA switches the adapter off instead


def test_the_adapter_off_reference_is_the_frozen_base(tmp_path, tiny_model_dir):
    cfg = pref_config(tiny_model_dir, pairs_file(tmp_path, 8), training={"max_steps": 3, "lr": 5e-2})
    s = prepare(cfg, **QUIET)
    loop.train(s, RunFolder(tmp_path / "run"), loop.LoopState(), lambda: False)
    batch = s.method.collate(s.train[:4])
    with reference_mode(s.model):
        reference, _ = sequence_logps(s.model, batch)
    frozen = load_model(str(tiny_model_dir)).eval()  # a second, untouched copy of the base
    with torch.no_grad():
        expected, counts = sequence_logps(frozen, batch)
        tuned, _ = sequence_logps(s.model.eval(), batch)
    torch.testing.assert_close(reference, expected, rtol=0, atol=1e-5)
    assert (tuned - expected).abs().max() > 1e-3  # the adapter did move the policy
    assert batch["input_ids"].shape[0] == 4 and int(batch["sequences"]) == 8  # 4 pairs, both sides, a row each
    assert counts.tolist() == [float(sum(side.trained[1:])) for row in s.train[:4] for side in (row.chosen, row.rejected)]


def test_both_sides_of_every_pair_go_through_one_forward_pass(tmp_path, tiny_model_dir):
    cfg = pref_config(tiny_model_dir, pairs_file(tmp_path, 8), adapter="full", training={"batch_size": 4})
    s = prepare(cfg, **QUIET)
    calls = []
    s.model.model.register_forward_hook(lambda *_a: calls.append(1))
    out = loop.pass_loss(s, s.method.collate(s.train[:4]))
    assert len(calls) == 1 and out.count == 4  # the reference was computed once, before training
    assert out.total.item() == pytest.approx(4 * math.log(2), abs=1e-5)


def test_dpo_resumes_bitwise_after_an_interruption(tmp_path, tiny_model_dir):
    cfg = pref_config(tiny_model_dir, pairs_file(tmp_path, 10), lora={"dropout": 0.1},
                      training={"max_steps": 6, "save_every": 100})
    whole, resumed, reason = straight_and_resumed(lambda: prepare(cfg, **QUIET), tmp_path, stop_after=3)
    assert reason == "finished" and same_trainable_weights(whole, resumed)


@pytest.mark.parametrize("loss", ["ipo", "hinge", "robust", "simpo"])
def test_every_registered_dpo_loss_trains(tmp_path, tiny_model_dir, loss):
    cfg = pref_config(tiny_model_dir, pairs_file(tmp_path, 8), preference={"loss": loss, "label_smoothing": 0.1}
                      if loss == "robust" else {"loss": loss}, training={"max_steps": 2})
    info = run_training(cfg, tmp_path / "run", **QUIET)
    first = metrics(tmp_path / "run")[0]
    beta = cfg.preference.beta
    expected = {"ipo": (0 - 1 / (2 * beta)) ** 2, "hinge": 1.0, "robust": math.log(2)}
    if loss in expected:  # the policy is the reference at step 1: the margin is 0
        assert first["loss"] == pytest.approx(expected[loss], rel=1e-5)
    assert info["status"] == "finished" and math.isfinite(info["final_loss"])


def test_kto_starts_at_one_half_and_orpo_trains(tmp_path, tiny_model_dir):
    records = [{"prompt": f"What is {i} plus {i + 1}?", "completion": f"{2 * i + 1}." if i % 2 else f"{2 * i + 5}.",
                "label": bool(i % 2)} for i in range(10)]
    cfg = pref_config(tiny_model_dir, write_jsonl(tmp_path / "fb.jsonl", records), method="kto")
    run_training(cfg, tmp_path / "kto", **QUIET)
    first = metrics(tmp_path / "kto")[0]
    assert first["loss"] == 0.5 and first["kl"] == 0 and first["trained_examples"] == 2  # 1 - sigmoid(0)
    cfg = pref_config(tiny_model_dir, pairs_file(tmp_path, 8), method="orpo")
    run_training(cfg, tmp_path / "orpo", **QUIET)
    first = metrics(tmp_path / "orpo")[0]
    # loss = nll(chosen) - beta log sigmoid(log odds ratio), per pair
    assert first["loss"] == pytest.approx(first["nll"] - cfg.preference.beta * first["log_odds_ratio"], rel=1e-5)


def test_a_reward_model_learns_the_pairs_and_saves_its_head_with_the_adapter(tmp_path, tiny_model_dir):
    cfg = pref_config(tiny_model_dir, pairs_file(tmp_path, 12), method="reward", data={"val_split": 0.25},
                      training={"max_steps": 8, "lr": 2e-2})
    run_training(cfg, tmp_path / "run", **QUIET)
    evals = metrics(tmp_path / "run", "eval")
    assert evals[-1]["val_accuracy"] == 1.0 and evals[-1]["val_margin"] > evals[0]["val_margin"]
    saved = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert any(".score." in k for k in saved) and any("lora_A" in k for k in saved)
