"""Llama 3.1/3.2 rope scaling (`llama3`) in tunery's GGUF writer: the `rope_freqs` factors, llama.cpp
running the file like the Hugging Face model, and transformers' reader (which cannot represent the
scaling) named as skipped with its reason instead of failing or passing the file."""

from __future__ import annotations

import json

import pytest
import torch

from adapter_helpers import tiny_bpe_tokenizer
from external_tools import llama_cpp, require
from test_export_families import SMALL, random_model
from tunery.errors import TuneryError

# original_max_position_embeddings 32 with head_dim 16 and base 10000: the wavelengths are 6.3, 20,
# 63, 199 ... tokens, so one pair is kept, one smoothed and six divided by the factor.
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}


@pytest.fixture(scope="module")
def tiny_tok(smol_tokenizer):
    return tiny_bpe_tokenizer(smol_tokenizer.chat_template)


def llama3_config(vocab: int, **rope):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, tie_word_embeddings=True, rope_scaling=LLAMA3 | rope, **SMALL)


def write(model, tok, path, file_type="f32"):
    from tunery.data.render import chat_template_of
    from tunery.export.gguf_vocab import read_vocab
    from tunery.export.gguf_writer import write_gguf

    vocab = read_vocab(tok, model.config.vocab_size, chat_template_of(tok))
    return write_gguf(model, vocab, path, file_type, name="tiny")


def test_llama3_factors_are_transformers_frequency_ratios():
    from transformers.modeling_rope_utils import _compute_llama3_parameters

    from tunery.export.gguf_rope import rope_freqs_tensor

    config = llama3_config(64)
    base = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float) / 16))
    scaled, _ = _compute_llama3_parameters(config)
    expected = (base / scaled).numpy()
    got = rope_freqs_tensor(config, 10000.0, 16)
    assert got.shape == (8,) and got.dtype.name == "float32"
    assert abs(got - expected).max() < 1e-5, (got, expected)
    assert got[0] == 1.0 and 1.0 < got[1] < 8.0 and (got[2:] == 8.0).all()


def test_llama3_scaled_model_runs_in_llama_cpp_like_transformers(tiny_tok, tmp_path):
    require("llama.cpp", llama_cpp())
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    from tunery.export.probe import compare_logits, logits_of, probe_ids
    from tunery.export.verify import verify_gguf

    model = random_model(llama3_config(len(tiny_tok)))
    path = write(model, tiny_tok, tmp_path / "l3.gguf")
    assert "rope_freqs.weight" in [t.name for t in GGUFReader(path).tensors]
    record = verify_gguf(path, model, tiny_tok, "f32")
    llama = record["llama_cpp"]
    assert llama["ran"] is True, llama.get("why")
    top = llama["logits"]["max_abs_logit"]
    assert llama["logits"]["max_abs_diff"] < 1e-4 * top, llama["logits"]
    assert llama["greedy_identical"] is True
    # transformers' reader is named as skipped, with the reason, and checks the tokenizer only.
    skipped = record["transformers"]
    assert skipped["ran"] is False and "cannot represent rope scaling 'llama3'" in skipped["why"]
    assert skipped["tokenizer"]["probe_tokens_identical"] and skipped["tokenizer"]["chat_template_identical"]
    assert record["logits"] == llama["logits"] and record["passed"] is True, record["failures"]
    # The reason is true: transformers' reader runs this file unscaled, far from the model.
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="l3.gguf", dtype=torch.float32)
    rows = probe_ids(tiny_tok)
    unscaled = compare_logits(logits_of(model, rows), logits_of(loaded.eval(), rows))
    assert unscaled["max_abs_diff"] > 0.1 * top, unscaled


def test_without_llama_cpp_no_reader_runs_a_scaled_model_and_it_fails(tiny_tok, tmp_path, monkeypatch):
    from tunery.export import llamacpp
    from tunery.export.verify import verify_gguf

    monkeypatch.setattr(llamacpp, "reader_name", lambda: None)
    model = random_model(llama3_config(len(tiny_tok)))
    record = verify_gguf(write(model, tiny_tok, tmp_path / "l3.gguf"), model, tiny_tok, "f32")
    assert record["passed"] is False and record["llama_cpp"]["ran"] is False
    assert record["failures"][0].startswith("no reader ran the model: transformers' GGUF reader cannot represent")
    assert "llama.cpp is not installed" in record["failures"][0]


def test_a_wrong_rope_factor_fails_the_verification(tiny_tok, tmp_path, monkeypatch):
    require("llama.cpp", llama_cpp())
    from tunery.export import gguf_rope
    from tunery.export.verify import verify_gguf

    right = gguf_rope.llama3_rope_factors
    monkeypatch.setattr(gguf_rope, "llama3_rope_factors",
                        lambda base, dim, factor, *rest: right(base, dim, factor / 2, *rest))
    model = random_model(llama3_config(len(tiny_tok)))
    record = verify_gguf(write(model, tiny_tok, tmp_path / "wrong.gguf"), model, tiny_tok, "f32")
    assert record["llama_cpp"]["ran"] is True
    assert record["passed"] is False
    assert any(f.startswith("max |logit diff|") for f in record["failures"]), record["failures"]


def test_llama3_scaling_on_another_architecture_is_refused(tiny_tok, tmp_path):
    from transformers import Qwen2Config

    model = random_model(Qwen2Config(vocab_size=len(tiny_tok), rope_scaling=dict(LLAMA3), **SMALL))
    with pytest.raises(TuneryError, match="rope scaling 'llama3' is not supported by tunery's GGUF writer for 'qwen2'"):
        write(model, tiny_tok, tmp_path / "x.gguf")


@pytest.fixture(scope="module")
def llama3_task_run(tmp_path_factory, tiny_tok):
    """A tiny LoRA run over a llama3-scaled base, and a task file of the run's own greedy answers."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adapter_helpers import make_adapter_run
    from test_export_task_verify import MAX_NEW, PROMPTS
    from tunery.inference import generate_ids

    root = tmp_path_factory.mktemp("rope-task")
    random_model(llama3_config(len(tiny_tok))).save_pretrained(root / "base")
    tiny_tok.save_pretrained(root / "base")
    run, _ = make_adapter_run(root, tiny_tok, root / "base", target="all-linear", name="l3", adapter_scale=0.1)
    config = json.loads((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(json.dumps(config | {"eval": {"max_new_tokens": MAX_NEW}}))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(root / "base"), run / "adapter").eval()
    lines = []
    for prompt in PROMPTS:
        conv = [{"role": "user", "content": prompt}]
        answer = tiny_tok.decode(generate_ids(model, tiny_tok, [conv], max_new_tokens=MAX_NEW, batch_size=1)[0],
                                 skip_special_tokens=True).strip()
        lines.append(json.dumps({"messages": conv + [{"role": "assistant", "content": answer}]}))
    (root / "task.jsonl").write_text("\n".join(lines) + "\n")
    return run, root / "task.jsonl"


@pytest.mark.parametrize("wrong", [False, True])
def test_the_task_check_decides_a_llama3_export(wrong, llama3_task_run, tmp_path, monkeypatch):
    """`tunery export` of a Llama 3.1-style run: verify.json says why transformers' reader was skipped;
    llama.cpp's answers to the run's task decide (right factors: 100 = 100; factors halved: fails)."""
    require("llama.cpp", llama_cpp())
    from tunery.export import gguf_rope
    from tunery.export.exporter import export_run

    if wrong:
        right = gguf_rope.llama3_rope_factors
        monkeypatch.setattr(gguf_rope, "llama3_rope_factors",
                            lambda base, dim, factor, *rest: right(base, dim, factor / 2, *rest))
    run, task = llama3_task_run
    printed = []
    record = export_run(run, "gguf", tmp_path / "out", gguf_type="f32", verify_data=str(task), log=printed.append)
    assert any("transformers' GGUF reader cannot represent rope scaling 'llama3'" in line for line in printed)
    saved = json.loads((tmp_path / "out" / "verify.json").read_text())
    assert "cannot represent rope scaling 'llama3'" in saved["transformers"]["why"]
    assert saved["transformers"]["ran"] is False and saved["verdict_on"] == "task"
    exact = record["task"]["scores"]["exact"]
    if not wrong:
        assert exact == {"run": 100.0, "export": 100.0, "drop_points": 0.0}
        assert record["passed"] is True, record["failures"]
    else:
        assert exact["export"] < 98.0, exact
        assert record["passed"] is False and any(f.startswith("task: exact") for f in record["failures"])
