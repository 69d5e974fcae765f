"""Export verification on the run's own task: the run's greedy answers vs the export's through llama.cpp,
graded; a corrupted export fails, a correct one passes."""

from __future__ import annotations

import json

import pytest

from adapter_helpers import make_adapter_run, tiny_bpe_tokenizer, write_base
from external_tools import llama_cpp, require
from tunery.export import gguf_writer
from tunery.export.exporter import export_run

QUIET = dict(log=lambda _: None)
PROMPTS = ["What is the capital of France?", "Name a primary colour.", "Count: one, two,", "Hello there",
           "Book 2 nights in Oslo", "And then?", "Say yes or no.", "Which colour is the sky?"]
MAX_NEW = 12


@pytest.fixture(scope="module")
def task_run(tmp_path_factory, smol_tokenizer):
    """A tiny LoRA run and a task file whose references are that run's own greedy answers (so the run
    scores 100 on it, and any export that answers differently scores lower)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunery.inference import generate_ids

    tok = tiny_bpe_tokenizer(smol_tokenizer.chat_template)
    root = tmp_path_factory.mktemp("task-verify")
    base = write_base(root / "base", tok, scrambled=True)
    run, _ = make_adapter_run(root, tok, base, target="all-linear", name="task", adapter_scale=0.1)
    config = json.loads((run / "config.yaml").read_text())
    config["eval"] = {"max_new_tokens": MAX_NEW}
    (run / "config.yaml").write_text(json.dumps(config))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run / "adapter").eval()
    task = root / "task.jsonl"
    lines = []
    for prompt in PROMPTS:
        conv = [{"role": "user", "content": prompt}]
        answer = tok.decode(generate_ids(model, tok, [conv], max_new_tokens=MAX_NEW, batch_size=1)[0],
                            skip_special_tokens=True).strip()
        assert answer  # an empty reference would say nothing
        lines.append(json.dumps({"messages": conv + [{"role": "assistant", "content": answer}]}))
    task.write_text("\n".join(lines) + "\n")
    return run, task


def test_a_correct_export_passes_on_the_task(task_run, tmp_path):
    require("llama.cpp", llama_cpp())
    run, task = task_run
    record = export_run(run, "gguf", tmp_path / "out", gguf_type="f32", verify_data=str(task), **QUIET)
    check = record["task"]
    assert check["ran"] is True and check["reader"] == "llama.cpp"
    assert check["examples"] == len(PROMPTS) and check["max_new_tokens"] == MAX_NEW
    assert check["scores"]["exact"] == {"run": 100.0, "export": 100.0, "drop_points": 0.0}
    assert check["identical_answers"] == len(PROMPTS) and check["identical_share"] == 1.0
    assert record["verdict_on"] == "task" and record["passed"] is True, record["failures"]
    assert check["export_answer_tokens_per_s"] > 0 and check["threads"] >= 1
    saved = json.loads((tmp_path / "out" / "verify.json").read_text())
    assert saved["task"]["scores"]["exact"]["export"] == 100.0


def test_a_corrupted_export_fails_on_the_task(task_run, tmp_path, monkeypatch):
    """The writer's rotary row order dropped (a real class of GGUF bug): answers change, the score drops."""
    require("llama.cpp", llama_cpp())
    run, task = task_run
    monkeypatch.setattr(gguf_writer, "interleave_rotary_rows", lambda weight, n_heads: weight)
    record = export_run(run, "gguf", tmp_path / "out", gguf_type="f32", verify_data=str(task), **QUIET)
    check = record["task"]
    assert check["scores"]["exact"]["run"] == 100.0
    assert check["scores"]["exact"]["drop_points"] > 2.0
    assert check["identical_answers"] < len(PROMPTS) and check["differing_examples"]
    assert record["passed"] is False
    assert any(f.startswith("task: exact: ") and "> margin 2" in f for f in record["failures"])


def test_the_margin_is_the_allowed_drop(task_run, tmp_path, monkeypatch):
    require("llama.cpp", llama_cpp())
    run, task = task_run
    monkeypatch.setattr(gguf_writer, "interleave_rotary_rows", lambda weight, n_heads: weight)
    record = export_run(run, "gguf", tmp_path / "out", gguf_type="f32", verify_data=str(task),
                        verify_margin=100.0, **QUIET)
    assert record["task"]["passed"] is True and record["task"]["margin_points"] == 100.0
    assert record["probe_failures"]  # the probes still show the damage, as a diagnostic
    assert record["passed"] is True


def test_hf_export_is_checked_on_the_task_by_reloading_it(task_run, tmp_path):
    run, task = task_run
    record = export_run(run, "hf", tmp_path / "out", verify_data=str(task), **QUIET)
    assert record["task"]["reader"] == "transformers (the reloaded folder)"
    assert record["task"]["identical_answers"] == len(PROMPTS) and record["passed"] is True


def test_lora_gguf_is_checked_on_the_task_with_the_adapter_applied(task_run, tmp_path):
    require("llama.cpp", llama_cpp())
    run, task = task_run
    record = export_run(run, "gguf-lora", tmp_path / "out", gguf_type="f32", verify_data=str(task), **QUIET)
    assert record["task"]["scores"]["exact"]["export"] == 100.0 and record["passed"] is True


def test_default_sample_is_the_runs_validation_split(task_run, tmp_path):
    """Without --verify-data, the examples are the run's validation split, drawn as training drew it."""
    from tunery.data.dataset import load_examples, split_validation
    from tunery.export.task_verify import task_sample
    from tunery.runfolder import RunFolder

    run, task = task_run
    config = json.loads((run / "config.yaml").read_text())
    config["data"] = {"train": [str(task)], "val_split": 0.25}
    (run / "config.yaml").write_text(json.dumps(config))
    try:
        sample = task_sample(RunFolder(run), None, samples=32)
    finally:
        (run / "config.yaml").write_text(json.dumps(config | {"data": {"train": ["train.jsonl"]}}))
    examples, _ = load_examples([str(task)])
    _, held = split_validation(examples, 0.25, 42)  # training.seed defaults to 42
    assert "validation split" in sample.source
    assert [i.where for i in sample.items] == [e.location for e in held] and len(held) == 2
    assert sample.grader_specs == ["exact"]


def test_without_task_data_the_verdict_stays_on_the_probes(task_run, tmp_path):
    run, _ = task_run  # its config names train.jsonl, which is not there
    record = export_run(run, "gguf", tmp_path / "out", gguf_type="f32", **QUIET)
    assert record["task"]["ran"] is False and "train.jsonl" in record["task"]["why"]
    assert record["verdict_on"] == "probes" and record["passed"] is True
