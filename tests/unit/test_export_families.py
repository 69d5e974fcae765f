"""GGUF export of every supported family: a tiny random config of each, written by tunery's writer and
read back by transformers' GGUF loader and by llama.cpp, compared with the Hugging Face model."""

from __future__ import annotations

import pytest
import torch

from adapter_helpers import tiny_bpe_tokenizer
from export_helpers import SMALL, family_configs, random_model  # noqa: F401 (imported by other tests)
from external_tools import llama_cpp, require
from tunery.errors import TuneryError

# The llama.cpp of the pinned llama-cpp-cffi 0.4.42 predates Qwen3: it refuses the architecture (the
# llama.cpp of llama-cpp-python 0.3.36 reads it: tests/integration/test_llamacpp_readers.py).
LLAMA_CPP_LACKS = {"llama-cpp-cffi": {"qwen3": "unknown model architecture: 'qwen3'"}}


@pytest.fixture(scope="module")
def tiny_tok(smol_tokenizer):
    return tiny_bpe_tokenizer(smol_tokenizer.chat_template)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"])
def test_each_family_round_trips_through_both_readers(family, tiny_tok, tmp_path):
    reader = require("llama.cpp", llama_cpp())  # 'llama-cpp-cffi 0.4.42', say
    from tunery.data.render import chat_template_of
    from tunery.export.gguf_vocab import read_vocab
    from tunery.export.gguf_writer import write_gguf
    from tunery.export.verify import verify_gguf

    model = random_model(family_configs(len(tiny_tok))[family])
    vocab = read_vocab(tiny_tok, model.config.vocab_size, chat_template_of(tiny_tok))
    # (transformers' reader takes a llama file whose name contains "mistral" for a model type it
    # then cannot load: a neutral name)
    path = write_gguf(model, vocab, tmp_path / f"{family}.gguf", "f32", name="tiny")
    record = verify_gguf(path, model, tiny_tok, "f32")
    top = record["logits"]["max_abs_logit"]
    assert top > 1.0
    # f32 differs by float rounding only.
    assert record["logits"]["max_abs_diff"] < 1e-4 * top, record["logits"]
    assert record["greedy_identical"] is True
    assert record["tokenizer"] == {"chat_template_identical": True, "probe_tokens_identical": True,
                                   "stop_ids": [2], "stop_ids_identical": True}
    assert record["passed"] is True, record["failures"]
    llama = record["llama_cpp"]
    lacks = LLAMA_CPP_LACKS.get(reader.split()[0], {})
    if family in lacks:  # said in the record, with llama.cpp's own reason
        assert llama["ran"] is False and lacks[family] in llama["why"], llama
        return
    assert llama["ran"] is True, llama.get("why")
    # Float rounding, plus for Gemma ggml's GELU through an f16 table (stated here, not taken from tunery).
    share = 3e-3 if family.startswith("gemma") else 1e-4
    assert llama["logits"]["max_abs_diff"] < share * top, llama["logits"]
    assert llama["greedy_identical"] is True
    assert llama["tokenizer"]["chat_template_identical"] and llama["tokenizer"]["stop_ids_identical"]


def test_an_unsupported_family_lists_the_supported_ones(tiny_tok, tmp_path):
    from transformers import GPTNeoXConfig

    from tunery.export.gguf_writer import write_gguf

    model = random_model(GPTNeoXConfig(vocab_size=len(tiny_tok), hidden_size=64, num_hidden_layers=1,
                                       num_attention_heads=4, intermediate_size=128))
    with pytest.raises(TuneryError) as err:
        write_gguf(model, None, tmp_path / "x.gguf", "f32")
    text = str(err.value)
    assert "'gpt_neox'" in text
    for name in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"):
        assert name in text
