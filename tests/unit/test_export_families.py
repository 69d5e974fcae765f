"""GGUF export of every supported family: a tiny random config of each, written by tunery's writer and
read back by transformers' GGUF loader and by llama.cpp, compared with the Hugging Face model."""

from __future__ import annotations

import pytest
import torch

from adapter_helpers import scramble, tiny_bpe_tokenizer
from external_tools import llama_cpp, require
from tunery.errors import TuneryError

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=2, max_position_embeddings=512)


def family_configs(vocab: int) -> dict:
    """One tiny config per family, each with the feature that sets it apart switched on."""
    from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config, Qwen3Config

    return {
        "llama": LlamaConfig(vocab_size=vocab, tie_word_embeddings=True, **SMALL),
        "mistral": MistralConfig(vocab_size=vocab, tie_word_embeddings=False, sliding_window=None, **SMALL),
        "qwen2": Qwen2Config(vocab_size=vocab, tie_word_embeddings=True, **SMALL),  # q/k/v biases
        # q/k norms; head_dim 128 as in every Qwen3 (transformers reads no key_length for qwen3)
        "qwen3": Qwen3Config(vocab_size=vocab, head_dim=128, tie_word_embeddings=True, **SMALL),
        # Gemma: softcapping, (1 + w) norms, sliding windows. llama.cpp knows Gemma sizes by their
        # layer count (26 is Gemma 2 2B and Gemma 3 1B) and refuses others, so these have 26 thin layers.
        "gemma2": Gemma2Config(vocab_size=vocab, head_dim=256, query_pre_attn_scalar=256, sliding_window=8,
                               **(SMALL | {"num_hidden_layers": 26})),
        "gemma3_text": Gemma3TextConfig(vocab_size=vocab, head_dim=256, query_pre_attn_scalar=256, sliding_window=8,
                                        **(SMALL | {"num_hidden_layers": 26})),
        "phi3": Phi3Config(vocab_size=vocab, tie_word_embeddings=False, **SMALL),  # fused qkv and gate_up
    }


# The llama.cpp of the pinned llama-cpp-cffi 0.4.42 predates Qwen3: it refuses the architecture (the
# llama.cpp of llama-cpp-python 0.3.36 reads it: tests/integration/test_llamacpp_readers.py).
LLAMA_CPP_LACKS = {"llama-cpp-cffi": {"qwen3": "unknown model architecture: 'qwen3'"}}


@pytest.fixture(scope="module")
def tiny_tok(smol_tokenizer):
    return tiny_bpe_tokenizer(smol_tokenizer.chat_template)


def random_model(config, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = scramble(AutoModelForCausalLM.from_config(config), std=0.12, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # norms and biases away from their init, so a wrong (1 + w) or bias shows
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(torch.randn(param.shape, generator=gen) * 0.2)
    return model.eval()


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
