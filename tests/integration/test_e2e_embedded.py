"""End to end on the real embedded SmolLM2-135M-Instruct: lint, a few LoRA steps, generate, PEFT reload."""

from __future__ import annotations

import json

import pytest

from cli_helpers import REPO, run_tunery

pytestmark = pytest.mark.e2e
QUICK = REPO / "examples" / "quickstart"


def test_data_check_on_the_quickstart_files(tmp_path):
    out = run_tunery("data", "check", str(QUICK / "train.jsonl"), "--validation", str(QUICK / "heldout.jsonl"),
                     "--json", cwd=tmp_path)
    report = json.loads(out.stdout)
    assert report["ok"] is True and report["errors"] == []
    assert report["stats"]["train"]["examples"] == sum(1 for _ in open(QUICK / "train.jsonl"))


def test_train_a_few_steps_then_generate(tmp_path):
    small = tmp_path / "small.jsonl"
    small.write_text("".join(open(QUICK / "train.jsonl").readlines()[:24]))
    (tmp_path / "e2e.yaml").write_text(
        "base_model: smollm2-135m-instruct\n"
        "data: {train: [small.jsonl], val_split: 0.25, max_length: 256}\n"
        "training: {max_steps: 2, batch_size: 4, eval_every: 2}\n"
    )
    run_tunery("train", "e2e.yaml", cwd=tmp_path, timeout=600)
    run = tmp_path / "runs" / "e2e"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["step"] == 2
    assert info["trainable_params"] == 4_884_480  # LoRA r=16 on all 7 linear layers of 30 blocks
    assert info["best_val_loss"] is not None and 0 < info["best_val_loss"] < 10

    from peft import PeftModel
    from tunery.models.load import load_model

    model = PeftModel.from_pretrained(load_model("smollm2-135m-instruct"), run / "adapter")
    assert model.peft_config["default"].r == 16

    prompt = "Lena Park needs a room in Oslo for 2 nights."
    out = run_tunery("generate", str(run), "--prompt", prompt, "--max-new-tokens", "24", "--json", cwd=tmp_path)
    answers = json.loads(out.stdout)
    assert answers[0]["prompt"] == prompt and len(answers[0]["answer"].strip()) > 0
