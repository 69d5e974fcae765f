"""End to end on the real embedded SmolLM2-135M-Instruct: `tunery train` with each preference method
(dpo, orpo, kto, reward) for two steps, as a user runs it, then what a user checks: the run finished,
its adapter loads with plain PEFT + transformers, the metrics carry the method's figures, DPO's first
loss is log 2; and `tunery eval` on held-out pairs for the DPO run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cli_helpers import REPO, run_tunery

pytestmark = pytest.mark.e2e
EXAMPLE = REPO / "examples" / "preference"
BETA = 0.1
FIGURES = {"dpo": {"accuracy", "margin", "rewards_chosen", "rewards_rejected", "logps_chosen", "logps_rejected"},
           "orpo": {"nll", "log_odds_chosen", "log_odds_ratio"}, "kto": {"kl", "rewards", "desirable"},
           "reward": {"accuracy", "margin", "rewards_chosen", "rewards_rejected"}}


def _project(folder, method: str) -> str:
    """12 pairs of the preference example (KTO: each pair as a desirable and an undesirable answer) and a
    two-step config for `method`."""
    pairs = [json.loads(line) for line in (EXAMPLE / "train.jsonl").read_text().splitlines()[:12]]
    if method == "kto":
        records = [{"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
                   for p in pairs for side in ("chosen", "rejected")]
    else:
        records = pairs
    (folder / f"{method}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / f"{method}.yaml").write_text(
        f"base_model: smollm2-135m-instruct\nmethod: {method}\n"
        f"data: {{train: [{method}.jsonl], val_split: 0.25, max_length: 128}}\n"
        "lora: {rank: 8, alpha: 16, dropout: 0.0}\n"
        f"preference: {{beta: {BETA}}}\n"
        "training: {max_steps: 2, batch_size: 2, eval_every: 2, lr: 5.0e-4, warmup_ratio: 0.0, preflight: false}\n")
    return f"{method}.yaml"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pref-e2e")
    for method in FIGURES:
        run_tunery("train", _project(folder, method), cwd=folder, timeout=1800)
    return folder


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", list(FIGURES))
def test_each_method_finishes_and_logs_its_figures(runs, method):
    run = runs / "runs" / method
    info = json.loads((run / "run.json").read_text())
    assert (info["status"], info["step"], info["method"], info["adapter"]) == ("finished", 2, method, "lora")
    train = [m for m in _metrics(run) if m["kind"] == "train"]
    evals = [m for m in _metrics(run) if m["kind"] == "eval"]
    assert [m["step"] for m in train] == [1, 2] and [m["step"] for m in evals] == [2]
    assert FIGURES[method] <= set(train[0]) and all(math.isfinite(m["loss"]) for m in train)
    first = train[0]
    if method == "dpo":  # the policy starts as its reference: every pair's loss is -log sigmoid(0)
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-5) and first["margin"] == 0
    elif method == "kto":  # 1 - sigmoid(0), and the reference point starts at 0
        assert first["loss"] == pytest.approx(0.5, abs=1e-6) and first["kl"] == 0
    elif method == "orpo":  # loss = nll - beta * log sigmoid(log odds ratio), per pair
        assert first["loss"] == pytest.approx(first["nll"] - BETA * first["log_odds_ratio"], rel=1e-5)
    else:  # the reward head starts random: a Bradley-Terry loss near log 2, not exactly
        assert 0 < first["loss"] < 5 and "val_accuracy" in evals[0]
    unit = "trained_examples" if method == "kto" else "trained_pairs"
    assert first[unit] == 2


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto"])
def test_a_policy_adapter_loads_with_plain_peft_and_moves_the_model(runs, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunery.models.embedded import embedded_model_dir

    base_dir = embedded_model_dir("smollm2-135m-instruct")
    run = runs / "runs" / method
    tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Where does Ana live?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        before = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, run / "adapter").eval()
        after = tuned(input_ids=ids).logits
    assert tuned.peft_config["default"].r == 8 and torch.isfinite(after).all()
    assert (after - before).abs().max() > 1e-4  # two steps moved the answer's distribution


def test_the_reward_adapter_loads_with_its_head_as_a_sequence_classifier(runs):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from tunery.models.embedded import embedded_model_dir

    run = runs / "runs" / "reward"
    model = AutoModelForSequenceClassification.from_pretrained(embedded_model_dir("smollm2-135m-instruct"), num_labels=1)
    model = PeftModel.from_pretrained(model, run / "adapter").eval()
    saved = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    head = next(v for k, v in saved.items() if k.endswith("score.weight"))
    assert torch.equal(model.base_model.model.score.modules_to_save["default"].weight, head)


def test_eval_on_held_out_pairs_scores_the_dpo_run_against_its_base(runs):
    heldout = runs / "heldout.jsonl"
    heldout.write_text("".join((EXAMPLE / "heldout.jsonl").read_text().splitlines(keepends=True)[:8]))
    out = run_tunery("eval", str(runs / "runs" / "dpo"), "--data", str(heldout), "--json", cwd=runs, timeout=1800)
    result = json.loads(out.stdout)
    assert result["kind"] == "pairs" and result["n_examples"] == 8
    base, tuned = result["systems"]
    assert (base["system"]["name"], tuned["system"]["name"]) == ("base", "tuned (dpo)")
    assert base["scores"]["accuracy"]["mean"] == 0.5 and tuned["system"]["reference"].endswith("(adapter off)")
    for b, t in zip(base["per_example"], tuned["per_example"]):
        assert t["ref_logp_chosen"] == pytest.approx(b["logp_chosen"], abs=1e-3)
        assert t["scores"]["accuracy"] == float(t["log_ratio_chosen"] > t["log_ratio_rejected"])
    assert {(c["a_column"], c["b_column"]) for c in result["comparisons"]} == {("accuracy", "accuracy"),
                                                                                ("logp_accuracy", "logp_accuracy")}
    assert json.loads((runs / "runs" / "dpo" / "eval.json").read_text()) == result
    assert "tuned (dpo) ranks the chosen answer first" in result["summary"]
