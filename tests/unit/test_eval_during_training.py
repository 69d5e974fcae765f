"""The functions the training loop calls to score graders during training, and the `eval:` config section."""

from __future__ import annotations

import json

import pytest

from eval_helpers import PEOPLE, booking, make_project, reference_of, write_jsonl
from tunery.config.load import load_config, validate
from tunery.errors import TuneryError
from tunery.eval.during_training import due, eval_sample, graders_of, metrics_record, score_sample


def test_eval_section_defaults_and_grader_specs_are_checked_at_load():
    cfg = validate({"data": {"train": ["t.jsonl"]}})
    assert (cfg.eval.graders, cfg.eval.sample, cfg.eval.early_stopping_on, cfg.eval.probe) == ([], 16, "val_loss", "builtin")
    with pytest.raises(TuneryError, match="unknown grader 'exat': did you mean exact"):
        validate({"data": {"train": ["t.jsonl"]}, "eval": {"graders": ["exat"]}})
    with pytest.raises(TuneryError, match="eval.early_stopping_on"):
        validate({"data": {"train": ["t.jsonl"]}, "eval": {"early_stopping_on": "loss"}})


def test_eval_data_path_is_relative_to_the_config(tmp_path):
    (tmp_path / "c.yaml").write_text("data: {train: [t.jsonl]}\neval: {data: v.jsonl, graders: [json_match]}\n")
    cfg = load_config(tmp_path / "c.yaml").config
    assert cfg.eval.data == [str(tmp_path / "v.jsonl")] and [g.label for g in graders_of(cfg)] == ["json_match"]


def test_due_every_n_steps_at_each_validation_and_at_the_end():
    cfg = validate({"data": {"train": ["t"]}, "eval": {"graders": ["exact"], "every": 3}})
    assert [s for s in range(1, 11) if due(cfg, s, 10, eval_every=5)] == [3, 6, 9, 10]
    cfg.eval.every = None
    assert [s for s in range(1, 11) if due(cfg, s, 10, eval_every=4)] == [4, 8, 10]
    cfg.eval.graders = []
    assert not any(due(cfg, s, 10, 4) for s in range(1, 11))


def test_sample_is_the_trainers_validation_hold_out_drawn_once(tmp_path, tiny_model_dir):
    from tunery.data.dataset import split_validation
    from tunery.eval.items import load_conversations

    paths = make_project(tmp_path, tiny_model_dir)
    cfg = load_config(paths["config"], ["eval.sample=1", "eval.graders=[exact]"]).config
    held = split_validation(load_conversations(str(paths["train"])), 0.25, cfg.training.seed)[1]
    sample = eval_sample(cfg)
    assert len(held) == 2 and len(sample) == 1 and sample[0].id in {e.location for e in held}
    assert [i.id for i in eval_sample(cfg)] == [i.id for i in sample]
    cfg.eval.sample = 16
    assert [i.id for i in eval_sample(cfg)] == [e.location for e in held]
    other = write_jsonl(tmp_path / "other.jsonl", [booking(*p) for p in PEOPLE[:3]])
    cfg.eval.data = [str(other)]
    assert [i.id for i in eval_sample(cfg)] == [f"{other}:{n}" for n in (1, 2, 3)]


def test_score_sample_scores_greedy_answers_and_restores_training_mode(tmp_path, tiny_model_dir, monkeypatch):
    from tunery.eval.items import read_eval_items
    from tunery.models.load import load_model, load_tokenizer

    items = read_eval_items(str(write_jsonl(tmp_path / "v.jsonl", [booking(*p) for p in PEOPLE[:4]])))
    model, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    graders = graders_of(validate({"data": {"train": ["t"]}, "eval": {"graders": ["json_match", "json"]}}))
    model.train()
    real = score_sample(model, tokenizer, items, graders, max_new_tokens=3)  # a random model: real generation
    assert model.training and real == {"score": 0.0, "json_match": 0.0, "json": 0.0, "n": 4}

    def canned(model, tokenizer, prompts, max_new_tokens, batch_size):
        assert not model.training  # answers are generated in eval mode (no dropout)
        return [reference_of(p) if i % 2 else "{broken" for i, p in enumerate(prompts)]

    monkeypatch.setattr("tunery.inference.generate_batch", canned)
    scores = score_sample(model, tokenizer, items, graders)
    assert scores == {"score": 0.5, "json_match": 0.5, "json": 0.5, "n": 4} and model.training
    assert metrics_record(10, scores) == {"kind": "grader", "step": 10, **scores}
    assert json.loads(json.dumps(metrics_record(10, scores)))["score"] == 0.5
