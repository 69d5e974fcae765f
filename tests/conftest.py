"""Shared fixtures: the real SmolLM2 tokenizer (from the embedded model's cache) and a tiny
random-weight Llama built from a config, so unit tests run in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

GPU_TIER = Path(__file__).resolve().parent / "gpu"


def no_cuda_reason() -> str | None:
    """Why the gpu tier cannot run here (None when a CUDA device is present)."""
    if torch.cuda.is_available():
        return None
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (f"no CUDA device (torch {torch.__version__}, {build}); "
            "scripts/gpu_tests.sh runs this tier on a GPU machine")


def pytest_collection_modifyitems(config, items):
    """Tests under tests/gpu/ are marked `gpu`; without CUDA every `gpu` test is skipped with the
    reason, which pytest's summary (-ra) prints for each of them."""
    reason = no_cuda_reason()
    for item in items:
        if GPU_TIER in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.gpu)
        if reason and item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason=f"gpu: {reason}"))


def pytest_report_header(config):
    reason = no_cuda_reason()
    return f"gpu tier: skipped, {reason}" if reason else f"gpu tier: runs on {torch.cuda.get_device_name(0)}"


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
