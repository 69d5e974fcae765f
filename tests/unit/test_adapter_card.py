"""Adapter cards: adapter/README.md generated from the run folder."""

from __future__ import annotations

import json

from adapter_helpers import make_adapter_run, write_base
from tunery.runcard import vllm_problems, write_adapter_card


def test_card_names_base_data_method_metrics_and_loading(smol_tokenizer, tmp_path):
    base_dir = write_base(tmp_path / "base", smol_tokenizer)
    run, _ = make_adapter_run(tmp_path, smol_tokenizer, base_dir, rslora=True, name="booking-json")
    path = write_adapter_card(run)
    text = path.read_text()
    assert path == run / "adapter" / "README.md"
    assert text.startswith(f'---\nbase_model: "{base_dir}"\nlibrary_name: peft\n')
    assert "# Adapter `booking-json`" in text
    assert "rank r = 4, alpha = 8, update scaled by alpha / sqrt(r) (rsLoRA)" in text
    assert "target modules: `q_proj`, `v_proj`" in text
    assert "training files: `train.jsonl` (12 examples)" in text
    assert "best validation loss: 2.5000 at step 6" in text
    assert "PeftModel.from_pretrained(base, \"adapter\")" in text
    assert "vllm serve" in text and "--lora-modules booking-json=adapter" in text
    assert write_adapter_card(run).read_text() == text  # a function of the run: same bytes again
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert vllm_problems(config) == []


def test_card_warns_where_vllm_would_refuse(smol_tokenizer, tmp_path):
    base_dir = write_base(tmp_path / "base", smol_tokenizer)
    run, _ = make_adapter_run(tmp_path, smol_tokenizer, base_dir, dora=True, modules_to_save=["lm_head"])
    text = write_adapter_card(run).read_text()
    assert "A DoRA adapter" in text and "vllm serve" not in text
    assert "DoRA adapters are not supported by vLLM" in text and "whole trained modules (lm_head)" in text
    assert write_adapter_card(tmp_path / "base") is None  # no adapter, no card
