"""Rope scaling types besides Llama 3's: `linear` (Llama, Gemma 3's global layers), `yarn` (Qwen2.5/Qwen3,
Llama) and Phi-3's `longrope`, written with the `gguf` package's keys and run by llama.cpp like the
Hugging Face model; `dynamic` refused with llama.cpp's reason.

Each tiny config pretends it was pretrained for 32 tokens (`original_max_position_embeddings`), and the
probe prompts are 41 to 112 tokens long, so every comparison runs past the original context, where
the scaling matters (longrope switches to its long factors there)."""

from __future__ import annotations

import pytest
import torch

from adapter_helpers import tiny_bpe_tokenizer
from external_tools import llama_cpp, require
from export_helpers import CASES, ORIGINAL, SHARE, SMALL, random_model, scaled_config, write
from tunery.errors import TuneryError


@pytest.fixture(scope="module")
def tiny_tok(smol_tokenizer):
    return tiny_bpe_tokenizer(smol_tokenizer.chat_template)


def metadata(path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    out = {}
    for field in reader.fields.values():
        if ".rope.scaling." in field.name:
            value = field.contents()
            out[field.name.split(".rope.scaling.")[1]] = value
    return out | {"tensors": {t.name: t.data.copy() for t in reader.tensors if t.name.startswith("rope_")}}


@pytest.mark.parametrize("case", CASES)
def test_the_file_holds_the_scaling_llama_cpp_reads(case, tiny_tok, tmp_path):
    """The keys and tensors, against transformers' own figures for the same config."""
    model = random_model(scaled_config(case, len(tiny_tok)))
    got = metadata(write(model, tiny_tok, tmp_path / "x.gguf"))
    kind = case.split("-")[0]
    assert got["type"] == kind
    if kind == "linear":
        assert got["factor"] == pytest.approx(model.config.rope_parameters.get("full_attention", model.config.rope_parameters)["factor"])
        assert "original_context_length" not in got and not got["tensors"]
    if kind == "yarn":
        assert got["factor"] == 16.0 and got["original_context_length"] == ORIGINAL and not got["tensors"]
    if kind == "longrope":
        rotary = model.model.rotary_emb
        assert got["original_context_length"] == ORIGINAL
        # transformers' cos/sin multiplier: sqrt(1 + ln(512 / 32) / ln(32)) = 1.342
        assert got["attn_factor"] == pytest.approx(rotary.attention_scaling, rel=1e-6) and got["attn_factor"] > 1.3
        rope = model.config.rope_parameters
        assert got["tensors"]["rope_factors_long.weight"].tolist() == rope["long_factor"]
        assert got["tensors"]["rope_factors_short.weight"].tolist() == pytest.approx(rope["short_factor"])


@pytest.mark.parametrize("case", CASES)
def test_each_scaled_model_runs_in_llama_cpp_like_transformers(case, tiny_tok, tmp_path):
    require("llama.cpp", llama_cpp())
    from transformers import AutoModelForCausalLM

    from tunery.export.probe import compare_logits, logits_of, probe_ids
    from tunery.export.verify import verify_gguf

    rows = probe_ids(tiny_tok)
    assert min(len(r) for r in rows) > ORIGINAL  # every comparison runs past the original context
    model = random_model(scaled_config(case, len(tiny_tok)))
    path = write(model, tiny_tok, tmp_path / "scaled.gguf")
    record = verify_gguf(path, model, tiny_tok, "f32")
    llama = record["llama_cpp"]
    assert llama["ran"] is True, llama.get("why")
    top = llama["logits"]["max_abs_logit"]
    assert llama["logits"]["max_abs_diff"] < SHARE.get(case, 1e-4) * top, llama["logits"]
    assert llama["greedy_identical"] is True
    assert record["passed"] is True, record["failures"]
    # transformers' reader is named as skipped (in verify.json), and the reason is true: it runs the
    # file unscaled, far from the model.
    kind = case.split("-")[0]
    assert record["transformers"]["ran"] is False
    assert f"cannot represent rope scaling '{kind}'" in record["transformers"]["why"]
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    unscaled = compare_logits(logits_of(model, rows), logits_of(loaded, rows))
    assert unscaled["max_abs_diff"] > 0.05 * top, unscaled


@pytest.mark.parametrize("case", CASES)
def test_a_file_without_the_scaling_fails_the_verification(case, tiny_tok, tmp_path, monkeypatch):
    """The comparison above can fail: the same file with its scaling left out is caught by llama.cpp."""
    require("llama.cpp", llama_cpp())
    from tunery.export import gguf_writer
    from tunery.export.verify import verify_gguf

    monkeypatch.setattr(gguf_writer, "write_rope_scaling", lambda writer, config: None)
    monkeypatch.setattr(gguf_writer, "rope_tensors", lambda config, base, dim: [])
    model = random_model(scaled_config(case, len(tiny_tok)))
    record = verify_gguf(write(model, tiny_tok, tmp_path / "unscaled.gguf"), model, tiny_tok, "f32")
    assert record["llama_cpp"]["ran"] is True
    assert record["passed"] is False
    assert any(f.startswith("max |logit diff|") for f in record["failures"]), record["failures"]


def test_dynamic_scaling_is_refused_with_llama_cpp_s_reason(tiny_tok, tmp_path):
    from transformers import Qwen2Config

    model = random_model(Qwen2Config(vocab_size=len(tiny_tok), rope_scaling={"rope_type": "dynamic", "factor": 2.0},
                                     **SMALL))
    with pytest.raises(TuneryError) as err:
        write(model, tiny_tok, tmp_path / "x.gguf")
    text = str(err.value)
    assert "rope scaling 'dynamic' is not supported by tunery's GGUF writer for 'qwen2'" in text
    assert "llama.cpp has no dynamic NTK scaling" in text and "--format hf" in text
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("extra, named", [({"beta_fast": 16.0}, "beta_fast=16.0"),
                                          ({"attention_factor": 1.5}, "attention_factor=1.5"),
                                          ({"truncate": False}, "truncate=False")])
def test_yarn_settings_llama_cpp_ignores_are_refused(extra, named, tiny_tok, tmp_path):
    from transformers import Qwen2Config

    rope = {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": ORIGINAL} | extra
    model = random_model(Qwen2Config(vocab_size=len(tiny_tok), rope_scaling=rope, **SMALL))
    with pytest.raises(TuneryError, match=f"llama.cpp reads none of {named}"):
        write(model, tiny_tok, tmp_path / "x.gguf")


def test_longrope_outside_phi3_and_scaled_sliding_layers_are_refused(tiny_tok, tmp_path):
    from transformers import Gemma3TextConfig, LlamaConfig

    rope = {"rope_type": "longrope", "long_factor": [1.0] * 8, "short_factor": [1.0] * 8,
            "original_max_position_embeddings": ORIGINAL}
    model = random_model(LlamaConfig(vocab_size=len(tiny_tok), rope_scaling=rope, **SMALL))
    with pytest.raises(TuneryError, match="rope scaling 'longrope' is not supported .* for 'llama'"):
        write(model, tiny_tok, tmp_path / "x.gguf")
    sliding = Gemma3TextConfig(vocab_size=len(tiny_tok), head_dim=256, query_pre_attn_scalar=256, sliding_window=8,
                               **(SMALL | {"num_hidden_layers": 2}))
    sliding.rope_parameters["sliding_attention"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(TuneryError, match="sliding-window layers unscaled"):
        write(random_model(sliding), tiny_tok, tmp_path / "y.gguf")


@pytest.fixture(scope="module")
def longrope_task_run(tmp_path_factory, tiny_tok):
    """A tiny LoRA run over a Phi-4-mini-like longrope base, and a task file of the run's own greedy answers."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adapter_helpers import make_adapter_run
    from test_export_task_verify import MAX_NEW, PROMPTS
    from tunery.inference import generate_ids, prompt_ids

    root = tmp_path_factory.mktemp("longrope-task")
    random_model(scaled_config("longrope-phi3", len(tiny_tok))).save_pretrained(root / "base")
    tiny_tok.save_pretrained(root / "base")
    run, _ = make_adapter_run(root, tiny_tok, root / "base", target="all-linear", name="phi", adapter_scale=0.1)
    config = json.loads((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(json.dumps(config | {"eval": {"max_new_tokens": MAX_NEW}}))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(root / "base"), run / "adapter").eval()
    lines, lengths = [], []
    for prompt in PROMPTS:
        conv = [{"role": "user", "content": prompt}]
        lengths.append(len(prompt_ids(tiny_tok, conv)))
        answer = tiny_tok.decode(generate_ids(model, tiny_tok, [conv], max_new_tokens=MAX_NEW, batch_size=1)[0],
                                 skip_special_tokens=True).strip()
        lines.append(json.dumps({"messages": conv + [{"role": "assistant", "content": answer}]}))
    (root / "task.jsonl").write_text("\n".join(lines) + "\n")
    return run, root / "task.jsonl", lengths


@pytest.mark.parametrize("unscaled", [False, True])
def test_the_task_check_decides_a_longrope_export(unscaled, longrope_task_run, tmp_path, monkeypatch):
    """`tunery export` of a run over a longrope base: verify.json names transformers' reader as skipped
    for 'longrope', and llama.cpp's answers to the run's task (prompts past the original context)
    equal the run's; written without the scaling, the export fails on the task."""
    import json

    require("llama.cpp", llama_cpp())
    from tunery.export import gguf_writer
    from tunery.export.exporter import export_run

    if unscaled:
        monkeypatch.setattr(gguf_writer, "write_rope_scaling", lambda writer, config: None)
        monkeypatch.setattr(gguf_writer, "rope_tensors", lambda config, base, dim: [])
    run, task, lengths = longrope_task_run
    assert min(lengths) > ORIGINAL, lengths
    record = export_run(run, "gguf", tmp_path / "out", gguf_type="f32", verify_data=str(task), log=lambda _: None)
    saved = json.loads((tmp_path / "out" / "verify.json").read_text())
    assert saved["transformers"]["ran"] is False and "rope scaling 'longrope'" in saved["transformers"]["why"]
    assert saved["verdict_on"] == "task" and saved["reader"].startswith("llama.cpp (")
    exact = record["task"]["scores"]["exact"]
    if not unscaled:
        assert exact == {"run": 100.0, "export": 100.0, "drop_points": 0.0}
        assert record["passed"] is True, record["failures"]
    else:
        assert exact["export"] < 98.0, exact
        assert record["passed"] is False and any(f.startswith("task: exact") for f in record["failures"])
