"""End to end on the real embedded SmolLM2-135M-Instruct: lint, a few LoRA steps, generate, PEFT reload."""

from __future__ import annotations

import json

import pytest
import torch

from cli_helpers import REPO, run_tunery

pytestmark = pytest.mark.e2e
QUICK = REPO / "examples" / "quickstart"


def test_data_check_on_the_quickstart_files(tmp_path):
    out = run_tunery("data", "check", str(QUICK / "train.jsonl"), "--validation", str(QUICK / "heldout.jsonl"),
                     "--json", cwd=tmp_path)
    report = json.loads(out.stdout)
    assert report["ok"] is True and report["errors"] == []
    assert report["stats"]["train"]["examples"] == sum(1 for _ in open(QUICK / "train.jsonl"))


SYSTEM = "Extract the hotel booking as JSON with the keys name, city, nights."


@torch.no_grad()
def answer_loss(model, tokenizer, records: list[dict]) -> float:
    """Mean loss per answer token (the answer and its <|im_end|>) over `records`, computed here with plain
    transformers: the answer's tokens are those the full rendering adds to the prompt's."""
    total, count = 0.0, 0
    for record in records:
        messages = record["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        assert full[:len(prompt)] == prompt and full[-2:] == [2, 198]  # ... <|im_end|> "\n"
        ids = torch.tensor([full[:-1]])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1]
        targets = ids[0, len(prompt):]
        total += float(torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum"))
        count += len(targets)
    return total / count


def test_train_a_few_steps_then_generate(tmp_path):
    lines = open(QUICK / "train.jsonl").readlines()
    (tmp_path / "small.jsonl").write_text("".join(lines[:24]))
    heldout = [json.loads(line) for line in open(QUICK / "heldout.jsonl").readlines()[:6]]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in heldout))
    (tmp_path / "e2e.yaml").write_text(
        "base_model: smollm2-135m-instruct\n"
        "data: {train: [small.jsonl], validation: [val.jsonl], max_length: 256}\n"
        "training: {max_steps: 6, batch_size: 4, lr: 1.0e-3, eval_every: 3, seed: 42}\n"
    )
    run_tunery("train", "e2e.yaml", cwd=tmp_path, timeout=1800)  # minutes on a busy 2-core machine
    run = tmp_path / "runs" / "e2e"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["step"] == 6
    assert info["trainable_params"] == 4_884_480  # LoRA r=16 on all 7 linear layers of 30 blocks

    from peft import PeftModel
    from tunery.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    base_loss = answer_loss(load_model("smollm2-135m-instruct"), tokenizer, heldout)
    model = PeftModel.from_pretrained(load_model("smollm2-135m-instruct"), run / "adapter").eval()
    assert model.peft_config["default"].r == 16
    tuned_loss = answer_loss(model, tokenizer, heldout)
    # Six steps make the held-out answers far more likely than under the base model; the run's own
    # validation figure is the same quantity on the same examples.
    assert tuned_loss < base_loss / 2, (tuned_loss, base_loss)
    assert info["best_val_loss"] == pytest.approx(tuned_loss, rel=1e-3) and info["best_step"] == 6

    prompts = ["Lena Park needs a room in Oslo for 2 nights.", "Book Omar Haddad into a hotel in Cairo, 4 nights."]
    out = run_tunery("generate", str(run), "--system", SYSTEM, "--prompt", prompts[0], "--prompt", prompts[1],
                     "--max-new-tokens", "40", "--json", cwd=tmp_path)
    answers = json.loads(out.stdout)
    assert [a["prompt"] for a in answers] == prompts
    parsed = [json.loads(a["answer"]) for a in answers]  # valid JSON, nothing around it
    assert parsed == [{"name": "Lena Park", "city": "Oslo", "nights": 2},
                      {"name": "Omar Haddad", "city": "Cairo", "nights": 4}]
