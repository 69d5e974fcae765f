"""`lora:` options: DoRA, rsLoRA, target modules by pattern, modules_to_save; errors for bad targets."""

from __future__ import annotations

import pytest

from conftest import make_tiny_model
from loop_helpers import tiny_config
from tunery.config.load import validate
from tunery.errors import TuneryError
from tunery.models.adapters import count_parameters, prepare_trainable


def prepared(vocab: int, **lora):
    cfg = tiny_config()
    cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update=lora)})
    return prepare_trainable(make_tiny_model(vocab), cfg)


def trainable_names(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def test_dora_rslora_pattern_and_modules_to_save_reach_peft(smol_tokenizer):
    vocab = len(smol_tokenizer)
    plain = prepared(vocab)
    assert count_parameters(plain)[0] == sum(  # rank 4 on every linear layer of 2 blocks
        4 * (i + o) for i, o in [(32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32)]) * 2

    dora = prepared(vocab, dora=True)
    magnitudes = [n for n in trainable_names(dora) if "lora_magnitude_vector" in n]
    assert len(magnitudes) == 14  # one per adapted layer
    assert count_parameters(dora)[0] == count_parameters(plain)[0] + 2 * (32 + 16 + 16 + 32 + 64 + 64 + 32)

    rs = prepared(vocab, rslora=True)
    layer = rs.get_base_model().model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / 4 ** 0.5)  # alpha / sqrt(r), not alpha / r = 2

    pattern = prepared(vocab, target_modules=r".*layers\.1\.self_attn\.(q|v)_proj")
    assert sorted({n.split(".lora_")[0] for n in trainable_names(pattern)}) == [
        "base_model.model.model.layers.1.self_attn.q_proj", "base_model.model.model.layers.1.self_attn.v_proj"]

    head = prepared(vocab, target_modules=["q_proj"], modules_to_save=["lm_head"])
    assert "base_model.model.lm_head.modules_to_save.default.weight" in trainable_names(head)


def test_bad_targets_are_clear_errors(smol_tokenizer):
    with pytest.raises(TuneryError, match="do not match this model"):
        prepared(len(smol_tokenizer), target_modules=["no_such_proj"])
    with pytest.raises(TuneryError, match="not a valid regular expression"):
        validate({"data": {"train": ["t.jsonl"]}, "lora": {"target_modules": "layers.(q"}})
    with pytest.raises(TuneryError, match="adapter: qlora needs a base model loaded in 4 bits"):
        prepare_trainable(make_tiny_model(len(smol_tokenizer)),
                          tiny_config().model_copy(update={"adapter": "qlora"}))
