"""Rendered rows cached on disk: the same rows come back, and any change to what they depend on renders again."""

from __future__ import annotations

import pytest

from data_helpers import chat, write
from tunery.config.load import validate
from tunery.data import dataset, token_cache


def config(train, **data):
    return validate({"data": {"train": [train], "val_split": 0.25, "max_length": 64} | data})


def rows_of(result):
    rows = [(r.ids, r.trained, r.truncated, r.answer_cut) for r in result.train + result.val]
    return rows, len(result.train), result.warnings, result.val_examples


def test_a_second_build_reads_the_same_rows_without_rendering(tmp_path, smol_tokenizer, monkeypatch):
    train = write(tmp_path / "t.jsonl", [chat(f"What is {i} plus {i}?", f"{2 * i}.") for i in range(12)]
                  + [chat("long " * 80, "cut")])  # the last one is dropped (answer beyond max_length)
    cfg, cache = config(train), tmp_path / "cache"
    first = dataset.build_datasets(cfg, smol_tokenizer, cache_dir=cache)
    assert len(list(cache.glob("*.safetensors"))) == 1 and first.warnings  # the drop warning is kept too
    assert len(first.val_examples) == 3  # and the validation examples (graders answer them)

    def no_render(*_args):
        raise AssertionError("rendered again")

    monkeypatch.setattr(dataset, "render_datasets", no_render)
    assert rows_of(dataset.build_datasets(cfg, smol_tokenizer, cache_dir=cache)) == rows_of(first)


@pytest.mark.parametrize("change", ["data", "max_length", "template", "train_on"])
def test_any_change_renders_again(tmp_path, smol_tokenizer, change):
    train = write(tmp_path / "t.jsonl", [chat(f"Q{i}?", f"A{i}.") for i in range(8)])
    cfg = config(train)
    key = token_cache.cache_key(cfg, smol_tokenizer)
    tokenizer = smol_tokenizer
    if change == "data":
        write(tmp_path / "t.jsonl", [chat(f"Q{i}?", f"A{i}!") for i in range(8)])
    elif change == "max_length":
        cfg = config(train, max_length=32)
    elif change == "train_on":
        cfg = config(train, train_on="all")
    else:
        tokenizer = type(smol_tokenizer).from_pretrained(smol_tokenizer.name_or_path)
        tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert token_cache.cache_key(cfg, tokenizer) != key


def test_a_resumed_run_reads_its_rendered_data_from_the_run_folder(tmp_path, tiny_model_dir, monkeypatch):
    from eval_helpers import make_project
    from tunery.config.load import load_config
    from tunery.trainers.run import run_training

    paths = make_project(tmp_path, tiny_model_dir)
    root = tmp_path / "runs" / "r"
    quiet = dict(log=lambda _text: None)
    first = load_config(paths["config"], ["training.max_steps=1", "training.preflight=false"]).config
    assert run_training(first, root, **quiet)["step"] == 1
    assert [p.suffix for p in sorted((root / "cache").iterdir())] == [".json", ".safetensors"]
    monkeypatch.setattr(dataset, "render_datasets", lambda *_a: (_ for _ in ()).throw(AssertionError("rendered")))
    longer = load_config(paths["config"], ["training.max_steps=2", "training.preflight=false"]).config
    assert run_training(longer, root, resume=True, **quiet)["step"] == 2
