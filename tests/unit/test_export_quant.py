"""GGUF k-quants (q6_k, q5_k_m, q4_k_m) made by llama.cpp's own quantizer from tunery's f16 file."""

from __future__ import annotations

import pytest
import torch

from adapter_helpers import make_adapter_run, tiny_bpe_tokenizer
from external_tools import llama_cpp, require
from tunery.export.exporter import export_run

QUIET = dict(log=lambda _: None)


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory, smol_tokenizer):
    """A LoRA run on a 2-layer model whose rows are 256 wide, so k-quant super-blocks fit."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_bpe_tokenizer(smol_tokenizer.chat_template)
    root = tmp_path_factory.mktemp("quant")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(config).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    run, _ = make_adapter_run(root, tok, root / "base", target="all-linear", name="wide", adapter_scale=0.05)
    return run


def test_k_quants_are_llama_cpps_types_and_both_readers_read_them(wide_run, tmp_path):
    require("llama.cpp", llama_cpp())
    sizes = {}
    for file_type, main_type in (("q8_0", "Q8_0"), ("q6_k", "Q6_K"), ("q5_k_m", "Q5_K"), ("q4_k_m", "Q4_K")):
        record = export_run(wide_run, "gguf", tmp_path / file_type, gguf_type=file_type, **QUIET)
        types = record["tensor_types"]
        assert types.get(main_type, 0) >= 7, types  # most of the 2 x 7 linear weights
        assert types["F32"] == 2 * 2 + 1  # the norms stay f32
        assert record["llama_cpp"]["ran"] is True  # llama.cpp loads it and answers the probes
        assert record["logits"]["positions"] > 30  # transformers' GGUF loader read it too
        assert record["tokenizer"]["stop_ids_identical"] and record["tokenizer"]["chat_template_identical"]
        sizes[file_type] = record["size_bytes"]
        if file_type != "q8_0":
            assert not list(tmp_path.joinpath(file_type).glob(".*f16-for-quantize*"))  # the f16 step is gone
    assert sizes["q4_k_m"] < sizes["q5_k_m"] < sizes["q6_k"] < sizes["q8_0"]


def test_an_unknown_type_lists_the_known_ones(wide_run, tmp_path):
    from tunery.errors import TuneryError

    with pytest.raises(TuneryError) as err:
        export_run(wide_run, "gguf", tmp_path / "x", gguf_type="q3_k", **QUIET)
    assert "q4_k_m" in str(err.value) and "q8_0" in str(err.value)
