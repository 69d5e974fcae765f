"""`tunery export`: GGUF round trip through transformers' GGUF loader, HF folders, Ollama Modelfiles."""

from __future__ import annotations

import json

import pytest
import torch

from adapter_helpers import make_adapter_run, tiny_bpe_tokenizer, write_base
from cli_helpers import run_tunery
from tunery.errors import TuneryError
from tunery.export import gguf_writer, llamacpp, ollama
from tunery.export.exporter import export_run

QUIET = dict(log=lambda _: None)


@pytest.fixture(scope="module")
def tiny_tok(smol_tokenizer):
    return tiny_bpe_tokenizer(smol_tokenizer.chat_template)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_tok):
    root = tmp_path_factory.mktemp("export")
    base = write_base(root / "base", tiny_tok, scrambled=True)
    run, _ = make_adapter_run(root, tiny_tok, base, target="all-linear", name="tiny-run",
                             adapter_scale=0.1)
    return run


def test_rotary_row_interleave_is_undone_by_the_gguf_reader():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weight = torch.arange(4 * 6 * 3, dtype=torch.float32).reshape(24, 3)  # 4 heads of dim 6
    stored = gguf_writer.interleave_rotary_rows(weight, 4)
    assert stored[:6, 0].tolist() == [0.0, 9.0, 3.0, 12.0, 6.0, 15.0]  # head 0: halves [0,3,6] [9,12,15]
    processor = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 4})
    back = processor.process(stored.numpy(), "blk.0.attn_q.weight").weights
    assert torch.equal(torch.from_numpy(back), weight)


@pytest.mark.parametrize("file_type", ["f32", "f16", "q8_0"])
def test_gguf_round_trip_on_the_tiny_model(tiny_run, tmp_path, file_type):
    record = export_run(tiny_run, "gguf", tmp_path / "out", gguf_type=file_type, **QUIET)
    assert record["passed"] is True, record["failures"]
    assert record["tokenizer"] == {"chat_template_identical": True, "probe_tokens_identical": True,
                                   "stop_ids": [2], "stop_ids_identical": True}
    logits = record["logits"]
    share = {"f32": 1e-6, "f16": 2e-2, "q8_0": 5e-2}[file_type]  # of the largest |logit|
    assert logits["max_abs_diff"] < share * logits["max_abs_logit"] and logits["max_abs_logit"] > 1.0
    if file_type != "q8_0":
        assert record["greedy_identical"] is True and record["greedy_tokens"] > 0
    gguf_path = tmp_path / "out" / f"tiny-run-{file_type}.gguf"
    assert record["size_bytes"] == gguf_path.stat().st_size
    saved = json.loads((tmp_path / "out" / "verify.json").read_text())
    assert saved["type"] == file_type and saved["passed"] is True
    assert not (tiny_run / "export").exists()  # the run folder is only read
    from gguf import GGUFReader

    fields = GGUFReader(gguf_path).fields
    assert fields["tokenizer.chat_template"].contents() == (tiny_run / "tokenizer" / "chat_template.jinja").read_text()
    assert fields["tokenizer.ggml.eos_token_id"].contents() == 2
    assert fields["tokenizer.ggml.eot_token_id"].contents() == 2


@pytest.mark.skipif(llamacpp.find_extension() is None,
                    reason="llama-cpp-cffi is not installed (make test installs it with --no-deps)")
@pytest.mark.parametrize("file_type", ["f32", "q8_0"])
def test_llama_cpp_reads_the_export_as_the_run_does(tiny_run, tmp_path, file_type):
    record = export_run(tiny_run, "gguf", tmp_path / "out", gguf_type=file_type, **QUIET)["llama_cpp"]
    assert record["ran"] is True and record["passed"] is True, record["failures"]
    assert record["reader"] == "llama.cpp (llama-cpp-cffi)"
    # llama.cpp's own tokeniser on the rendered template text gives the run's ids; it finds the
    # template in the metadata and takes the run's end-of-turn token as its end of generation.
    assert record["tokenizer"] == {"chat_template_identical": True, "probe_tokens_identical": True,
                                   "stop_ids": [2], "stop_ids_identical": True}
    share = {"f32": 1e-5, "q8_0": 5e-2}[file_type]
    assert record["logits"]["max_abs_diff"] < share * record["logits"]["max_abs_logit"]
    assert record["logits"]["positions"] > 30
    if file_type == "f32":
        assert record["greedy_identical"] is True


def test_verification_catches_a_wrong_tensor_layout(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_writer, "interleave_rotary_rows", lambda weight, n_heads: weight)
    record = export_run(tiny_run, "gguf", tmp_path / "out", gguf_type="f32", **QUIET)
    assert record["passed"] is False
    assert any("logit diff" in failure for failure in record["failures"])


def test_hf_export_loads_alone_and_is_verified(tiny_run, tmp_path):
    record = export_run(tiny_run, "hf", tmp_path / "hf", **QUIET)
    assert record["passed"] is True and record["logits"]["max_abs_diff"] == 0.0
    assert record["merge_vs_unmerged"]["max_abs_diff"] < 5e-5
    assert (tmp_path / "hf" / "model.safetensors").is_file() and (tmp_path / "hf" / "verify.json").is_file()


def test_ollama_export_from_the_command_line(tiny_run, tiny_tok, tmp_path):
    out = run_tunery("export", str(tiny_run), "--format", "ollama", "--out", "ollama", "--json", cwd=tmp_path)
    record = json.loads(out.stdout)
    assert record["passed"] is True and record["ollama"]["template_matches"] is True
    modelfile = (tmp_path / "ollama" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./tiny-run-f16.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in modelfile
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    conversation = [{"role": "system", "content": "Reply tersely."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye?"}]
    expected = tiny_tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert ollama.render_go_template(template, conversation, system=None) == expected
    assert expected == ("<|im_start|>system\nReply tersely.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye?<|im_end|>\n"
                        "<|im_start|>assistant\n")
    default_system = modelfile.split('SYSTEM """', 1)[1].split('"""', 1)[0]
    no_system = conversation[1:]
    assert ollama.render_go_template(template, no_system, default_system) == tiny_tok.apply_chat_template(
        no_system, tokenize=False, add_generation_prompt=True)
    assert "passed" in out.stderr.lower()


LLAMA3_STYLE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def test_modelfile_translation_of_other_templates():
    tok = tiny_bpe_tokenizer(LLAMA3_STYLE)
    text, record = ollama.modelfile(tok, "m.gguf", ["<|eot_id|>"])
    assert record["template_matches"] is True and "SYSTEM" not in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template.startswith("<|im_start|>{{ range .Messages }}")  # BOS once, before the messages
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                    {"role": "user", "content": "Again"}]
    assert ollama.render_go_template(template, conversation, None) == (
        "<|im_start|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nYo<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAgain<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    shouting = tiny_bpe_tokenizer(LLAMA3_STYLE.replace("m['content']", "m['content'] | upper"))
    with pytest.raises(TuneryError, match="does not reproduce"):
        ollama.modelfile(shouting, "m.gguf", ["<|eot_id|>"])
