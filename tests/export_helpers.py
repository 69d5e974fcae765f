"""Tiny random-weight models of every family and rope scaling type that tunery's GGUF writer handles,
for the export tests (tests/unit/test_export_*.py, tests/integration/test_llamacpp_readers.py) and
bench/export_readers.py."""

from __future__ import annotations

import torch

from adapter_helpers import scramble

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


ORIGINAL = 32  # the pretend pretraining context: shorter than every probe prompt
PAIRS_PHI = 6  # Phi-4-mini rotates 3/4 of each head: 12 of 16 dimensions, 6 pairs


def scaled_config(case: str, vocab: int):
    """A tiny config of each supported (rope type, family) pair."""
    from transformers import Gemma3TextConfig, LlamaConfig, Phi3Config, Qwen2Config, Qwen3Config

    yarn = {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": ORIGINAL}
    if case == "linear-llama":
        return LlamaConfig(vocab_size=vocab, tie_word_embeddings=True,
                           rope_scaling={"rope_type": "linear", "factor": 4.0}, **SMALL)
    if case == "linear-gemma3":  # Gemma 3 4B+: the global layers only (26 thin layers: a size llama.cpp knows)
        return Gemma3TextConfig(vocab_size=vocab, head_dim=256, query_pre_attn_scalar=256, sliding_window=8,
                                rope_scaling={"rope_type": "linear", "factor": 8.0},
                                **(SMALL | {"num_hidden_layers": 26}))
    if case == "linear-qwen2":
        return Qwen2Config(vocab_size=vocab, tie_word_embeddings=True,
                           rope_scaling={"rope_type": "linear", "factor": 4.0}, **SMALL)
    if case == "yarn-qwen2":  # max_position_embeddings 512 = 16 x 32: the factor transformers expects
        return Qwen2Config(vocab_size=vocab, tie_word_embeddings=True, rope_scaling=yarn, **SMALL)
    if case == "yarn-llama":
        return LlamaConfig(vocab_size=vocab, tie_word_embeddings=True, rope_scaling=dict(yarn), **SMALL)
    if case in ("yarn-qwen3", "linear-qwen3"):  # head_dim 128, as in every Qwen3
        rope = dict(yarn) if case.startswith("yarn") else {"rope_type": "linear", "factor": 4.0}
        return Qwen3Config(vocab_size=vocab, head_dim=128, tie_word_embeddings=True, rope_scaling=rope, **SMALL)
    if case == "longrope-phi3":  # Phi-4-mini's layout: partial rotary, factors per rotated pair
        rope = {"rope_type": "longrope", "long_factor": [1.0 + 3.0 * i for i in range(PAIRS_PHI)],
                "short_factor": [1.0 + 0.2 * i for i in range(PAIRS_PHI)]}
        return Phi3Config(vocab_size=vocab, tie_word_embeddings=False, partial_rotary_factor=0.75,
                          original_max_position_embeddings=ORIGINAL, rope_scaling=rope, **SMALL)
    raise KeyError(case)


CASES = ["linear-llama", "linear-qwen2", "linear-gemma3", "yarn-qwen2", "yarn-llama", "longrope-phi3"]
QWEN3_CASES = ["yarn-qwen3", "linear-qwen3"]  # for a llama.cpp that knows Qwen3 (not llama-cpp-cffi 0.4.42's)
# llama.cpp's own tolerance for f32 files: float rounding, and for Gemma ggml's GELU through an f16 table.
SHARE = {"linear-gemma3": 3e-3}


def write(model, tok, path):
    from tunery.data.render import chat_template_of
    from tunery.export.gguf_vocab import read_vocab
    from tunery.export.gguf_writer import write_gguf

    vocab = read_vocab(tok, model.config.vocab_size, chat_template_of(tok))
    return write_gguf(model, vocab, path, "f32", name="tiny")
