"""`tunery export`: GGUF round trip through transformers' GGUF loader, HF folders, Ollama Modelfiles."""

from __future__ import annotations

import json

import pytest
import torch

from adapter_helpers import make_adapter_run, tiny_bpe_tokenizer, write_base
from cli_helpers import run_tunery
from external_tools import llama_cpp, require
from tunery.errors import TuneryError
from tunery.export import gguf_writer, llamacpp, ollama
from tunery.export.exporter import export_run

QUIET = dict(log=lambda _: None)
# Largest |logit difference| from the unmerged PEFT model, as a share of its largest |logit|, stated here
# and not taken from tunery. f32 differs by float rounding only (measured 7e-7); f16 weights carry a
# relative error of 2^-11 each (measured 8e-4 through transformers, 1.1e-3 through llama.cpp); q8_0
# stores blocks of 32 weights as 8-bit codes times a scale (measured 2.5e-2 and 3.4e-2).
SHARE_OF_MAX_LOGIT = {"f32": 1e-5, "f16": 5e-3, "q8_0": 6e-2}
PROBES = [[{"role": "user", "content": "What is the capital of France?"}],
          [{"role": "system", "content": "Count."}, {"role": "user", "content": "one, two"},
           {"role": "assistant", "content": "three"}, {"role": "user", "content": "and then?"}]]


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


@pytest.fixture(scope="module")
def reference(tiny_run, tiny_tok):
    """(probe rows, logits of the run's adapter on its base through plain PEFT): computed here, on a path
    that shares nothing with tunery's export or verification."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = json.loads((tiny_run / "run.json").read_text())["base_model"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tiny_run / "adapter").eval()
    rows = [tiny_tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            for c in PROBES]
    with torch.no_grad():
        return rows, [model(input_ids=torch.tensor([row])).logits[0] for row in rows]


def assert_close_to_reference(reference, logits_of_rows, file_type) -> None:
    rows, expected = reference
    top = max(float(e.abs().max()) for e in expected)
    got = [torch.as_tensor(g, dtype=torch.float32).reshape(e.shape) for g, e in zip(logits_of_rows, expected)]
    worst = max(float((g - e).abs().max()) for g, e in zip(got, expected))
    assert top > 1.0 and worst <= SHARE_OF_MAX_LOGIT[file_type] * top, f"{worst:.3g} of max |logit| {top:.3g}"
    if file_type != "q8_0":  # 8-bit codes may flip a near-tie
        assert all(torch.equal(g.argmax(-1), e.argmax(-1)) for g, e in zip(got, expected))


@pytest.mark.parametrize("file_type", ["f32", "f16", "q8_0"])
def test_gguf_round_trip_on_the_tiny_model(tiny_run, tmp_path, file_type, reference):
    from transformers import AutoModelForCausalLM

    record = export_run(tiny_run, "gguf", tmp_path / "out", gguf_type=file_type, **QUIET)
    assert record["passed"] is True, record["failures"]
    assert record["tokenizer"] == {"chat_template_identical": True, "probe_tokens_identical": True,
                                   "stop_ids": [2], "stop_ids_identical": True}
    gguf_file = tmp_path / "out" / f"tiny-run-{file_type}.gguf"
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name).eval()
    with torch.no_grad():
        assert_close_to_reference(reference, [model(input_ids=torch.tensor([r])).logits[0] for r in reference[0]],
                                  file_type)
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


@pytest.mark.parametrize("file_type", ["f32", "q8_0"])
def test_llama_cpp_reads_the_export_as_the_run_does(tiny_run, tmp_path, file_type, reference):
    require("llama.cpp", llama_cpp())
    record = export_run(tiny_run, "gguf", tmp_path / "out", gguf_type=file_type, **QUIET)["llama_cpp"]
    read = llamacpp.read_back_isolated(tmp_path / "out" / f"tiny-run-{file_type}.gguf", [], reference[0], 1, set())
    assert_close_to_reference(reference, read.logits, file_type)
    assert record["ran"] is True and record["passed"] is True, record["failures"]
    assert record["reader"] == f"llama.cpp ({llamacpp.reader_name()})" and record["reader"].startswith("llama.cpp (llama-cpp-")
    # llama.cpp's own tokeniser on the rendered template text gives the run's ids; it finds the
    # template in the metadata and takes the run's end-of-turn token as its end of generation.
    assert record["tokenizer"] == {"chat_template_identical": True, "probe_tokens_identical": True,
                                   "stop_ids": [2], "stop_ids_identical": True}
    assert record["logits"]["positions"] > 30
    if file_type == "f32":
        assert record["greedy_identical"] is True


def test_llama_cpp_must_stop_on_every_end_id_of_the_run(tiny_run, tmp_path, monkeypatch):
    """A file from which llama.cpp reads no end-of-generation id (or fewer than the run stops on) fails:
    served by llama.cpp, its answers would not stop where the run's do."""
    require("llama.cpp", llama_cpp())
    real = llamacpp.read_back_isolated  # the reader runs in a child process: empty what it returns

    def no_end_ids(*args, **kwargs):
        got = real(*args, **kwargs)
        got.end_ids = []
        return got

    monkeypatch.setattr(llamacpp, "read_back_isolated", no_end_ids)
    record = export_run(tiny_run, "gguf", tmp_path / "out", gguf_type="f32", **QUIET)
    assert record["llama_cpp"]["tokenizer"]["stop_ids_identical"] is False
    assert "llama.cpp: stop tokens differ" in record["failures"] and record["passed"] is False


def test_verification_catches_a_wrong_tensor_layout(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_writer, "interleave_rotary_rows", lambda weight, n_heads: weight)
    record = export_run(tiny_run, "gguf", tmp_path / "out", gguf_type="f32", **QUIET)
    assert record["passed"] is False
    assert any("logit diff" in failure for failure in record["failures"])


def test_hf_export_loads_alone_and_is_verified(tiny_run, tmp_path, reference):
    from transformers import AutoModelForCausalLM

    record = export_run(tiny_run, "hf", tmp_path / "hf", **QUIET)
    assert record["passed"] is True and record["logits"]["max_abs_diff"] == 0.0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()  # plain transformers, no PEFT
    with torch.no_grad():
        assert_close_to_reference(reference, [merged(input_ids=torch.tensor([r])).logits[0] for r in reference[0]],
                                  "f32")
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
