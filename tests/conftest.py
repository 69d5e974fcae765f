"""Shared fixtures: the real SmolLM2 tokenizer (from the embedded model's cache) and a tiny
random-weight Llama built from a config, so unit tests run in seconds."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer with its ChatML template (converted once into the cache)."""
    from tunery.models.load import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def make_tiny_model(vocab_size: int, seed: int = 0, layers: int = 2):
    """A 2-layer Llama with the real vocabulary and random weights (about 3M parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture()
def tiny_model(smol_tokenizer):
    return make_tiny_model(len(smol_tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    """A random 2-layer Llama with SmolLM2's tokenizer, saved like any local HF model folder."""
    folder = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(len(smol_tokenizer)).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder
