"""Config: YAML + overrides, typed errors with suggestions, sources, defaults that follow practice."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunery.config.load import describe, load_config, parse_override, suggest, to_yaml, validate
from tunery.errors import TuneryError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sft-lora.yaml"
    path.write_text(text)
    return path


def test_defaults_follow_practice(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  train: [train.jsonl]\n")).config
    assert (cfg.adapter, cfg.lora.rank, cfg.training.max_grad_norm) == ("lora", 16, 1.0)
    assert cfg.peak_lr() == 2e-4
    assert validate({"adapter": "full", "data": {"train": ["x"]}}).peak_lr() == 2e-5
    assert 1 <= cfg.training.epochs <= 3


def test_paths_in_yaml_are_relative_to_the_file_and_overrides_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "run.yaml"
    path.write_text("data:\n  train: [a.jsonl]\n")
    cfg = load_config(path, ["data.validation=v.jsonl"]).config
    assert cfg.data.train == [str(tmp_path / "cfg" / "a.jsonl")]
    assert cfg.data.validation == [str(tmp_path / "v.jsonl")]
    assert cfg.output.name == "run"


def test_overrides_are_typed_and_sources_recorded(tmp_path):
    resolved = load_config(write(tmp_path, "data: {train: [t.jsonl]}\nlora: {rank: 8}\n"),
                           ["training.lr=1e-4", "lora.target_modules=[q_proj,v_proj]"])
    cfg = resolved.config
    assert cfg.training.lr == 1e-4 and isinstance(cfg.training.lr, float)
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    sources = {key: source for key, _, source in describe(resolved)}
    assert sources["training.lr"] == "command line"
    assert sources["lora.rank"] == "sft-lora.yaml"
    assert sources["lora.alpha"] == "default"


def test_unknown_key_suggests_the_closest(tmp_path):
    with pytest.raises(TuneryError) as err:
        load_config(write(tmp_path, "data: {train: [t.jsonl]}\nlora: {rnak: 8}\n"))
    assert "unknown key 'lora.rnak' (sft-lora.yaml): did you mean lora.rank?" in str(err.value)
    with pytest.raises(TuneryError, match="did you mean lora.rank"):
        load_config(write(tmp_path, "data: {train: [t.jsonl]}\n"), ["rank=8"])
    assert suggest("training.lr_") == "training.lr"
    # Names from transformers / PEFT / TRL get the key they mean, not the nearest spelling.
    assert suggest("training.learning_rate") == "training.lr"
    assert suggest("learning_rate") == "training.lr" and suggest("lora.lora_alpha") == "lora.alpha"
    assert suggest("training.gradient_accumulation_steps") == "training.grad_accum"
    assert suggest("nothing_like_this.zzz") is None
    with pytest.raises(TuneryError, match=r"unknown key 'training.learning_rate' \(command line\): "
                                          r"did you mean training.lr\?"):
        load_config(write(tmp_path, "data: {train: [t.jsonl]}\n"), ["training.learning_rate=1e-4"])


def test_bad_values_name_the_key_and_the_reason(tmp_path):
    path = write(tmp_path, "data: {train: [t.jsonl]}\n")
    with pytest.raises(TuneryError) as err:
        load_config(path, ["lora.rank=0", "adapter=lroa", "training.batch_size=two"])
    text = str(err.value)
    assert "lora.rank: Input should be greater than or equal to 1 (got 0)" in text
    assert "adapter: Input should be 'lora', 'qlora' or 'full'" in text
    assert "training.batch_size: Input should be a valid integer" in text


def test_missing_training_data_is_an_error(tmp_path):
    with pytest.raises(TuneryError, match="data.train is empty"):
        load_config(write(tmp_path, "adapter: lora\n"))


def test_override_without_equals_and_non_mapping_yaml(tmp_path):
    with pytest.raises(TuneryError, match="has no '='"):
        parse_override("training.lr")
    with pytest.raises(TuneryError, match="must hold a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_yaml_is_loaded_safely(tmp_path):
    evil = "data: {train: [t.jsonl]}\nbase_model: !!python/object/apply:os.system ['echo hi']\n"
    with pytest.raises(TuneryError, match="not valid YAML"):
        load_config(write(tmp_path, evil))


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(write(tmp_path, "data: {train: [t.jsonl]}\n"), ["training.seed=7"]).config
    assert validate(yaml.safe_load(to_yaml(cfg))) == cfg
