"""GGUF + Ollama export of a LoRA run on the real embedded SmolLM2-135M-Instruct, read back by
transformers' GGUF loader: the real 49k vocabulary, ChatML template with its default system message."""

from __future__ import annotations

import json

import pytest

from adapter_helpers import randomize_adapter
from external_tools import llama_cpp, require

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A LoRA run of the embedded model exported for Ollama: (run folder, export folder, record, tokenizer)."""
    from peft import LoraConfig, get_peft_model

    from tunery.data.render import chat_template_of
    from tunery.export.exporter import export_run
    from tunery.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    tokenizer.chat_template = chat_template_of(tokenizer)
    model = get_peft_model(load_model("smollm2-135m-instruct"),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    randomize_adapter(model, seed=5, scale=0.02)  # a small real change, like a short training run
    tmp_path = tmp_path_factory.mktemp("embedded-export")
    run = tmp_path / "smol"
    model.save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "tokenizer")
    (run / "run.json").write_text(json.dumps({"base_model": "smollm2-135m-instruct", "adapter": "lora",
                                              "status": "finished"}))
    del model

    record = export_run(run, "ollama", tmp_path / "ollama", gguf_type="f16", log=lambda _: None)
    return run, tmp_path / "ollama", record, tokenizer


def test_ollama_export_of_the_embedded_model_round_trips(exported):
    from tunery.export.ollama import render_go_template

    run, out, record, tokenizer = exported
    assert record["passed"] is True, record["failures"]
    assert record["tokenizer"]["probe_tokens_identical"] and record["tokenizer"]["stop_ids"] == [2]
    assert record["greedy_identical"] is True and record["greedy_tokens"] >= 10
    assert record["logits"]["argmax_agrees"] is True
    assert record["logits"]["max_abs_diff"] < 0.01 * record["logits"]["max_abs_logit"]  # f16 rounding only
    assert record["merge_vs_unmerged"]["max_abs_diff"] < 1e-3
    assert 250e6 < record["size_bytes"] < 300e6  # 135M parameters at 2 bytes, norms at 4
    modelfile = (out / "Modelfile").read_text()
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    system = modelfile.split('SYSTEM """', 1)[1].split('"""', 1)[0]
    assert system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    turns = [{"role": "user", "content": "Book 3 nights in Oslo for Ada Berg."},
             {"role": "assistant", "content": '{"name": "Ada Berg", "city": "Oslo", "nights": 3}'},
             {"role": "user", "content": "And 2 nights in Rome for Li Wei?"}]
    expected = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert render_go_template(template, turns, system) == expected
    assert json.loads((out / "verify.json").read_text())["passed"] is True
    assert not (run / "export").exists()  # export only reads the run


def test_llama_cpp_reads_the_embedded_export(exported):
    require("llama.cpp", llama_cpp())
    llama = exported[2]["llama_cpp"]
    assert llama["ran"] is True, llama.get("why")
    assert llama["passed"] is True and llama["greedy_identical"] is True, llama["failures"]
    assert llama["tokenizer"]["probe_tokens_identical"] and llama["tokenizer"]["chat_template_identical"]
    assert llama["tokenizer"]["stop_ids"] == [2] and llama["tokenizer"]["stop_ids_identical"] is True
