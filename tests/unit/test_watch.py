"""The watch over a run (graders scored during training: sample, schedule, scoring) and the `eval:` section."""

from __future__ import annotations


import pytest

from eval_helpers import PEOPLE, booking, make_project, reference_of, write_jsonl
from tunery.config.load import load_config, validate
from tunery.errors import TuneryError
from tunery.graders import parse_graders
from tunery.trainers.watch import Watch, default_eval_every, grader_sample


def watch_for(cfg, total=10, eval_every=4, val_examples=()):
    return Watch(cfg.model_copy(update={"training": cfg.training.model_copy(update={"eval_every": eval_every})}),
                 total, eval_every, parse_graders(cfg.eval.graders), ["item"] if cfg.eval.graders else [])


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
    assert cfg.eval.data == [str(tmp_path / "v.jsonl")] and cfg.eval.graders == ["json_match"]


def test_due_every_n_steps_at_each_validation_and_at_the_end():
    cfg = validate({"data": {"train": ["t"]}, "eval": {"graders": ["exact"], "every": 3}})
    assert [s for s in range(1, 11) if watch_for(cfg, eval_every=5).grader_due(s)] == [3, 6, 9, 10]
    cfg.eval.every = None
    watch = watch_for(cfg, eval_every=4)
    assert [s for s in range(1, 11) if watch.grader_due(s)] == [4, 8, 10]
    assert [s for s in range(1, 11) if watch.validation_due(s)] == [4, 8, 10]
    cfg.eval.graders = []
    assert not any(watch_for(cfg).grader_due(s) for s in range(1, 11))


def test_default_validation_is_ten_times_a_run_unless_it_would_cost_more_than_its_share():
    assert [default_eval_every(steps, 0.0) for steps in (1, 6, 9, 10, 40, 1000)] == [1, 1, 1, 1, 4, 100]
    # a validation worth 1.33 steps (32 examples, 8 a step): 40 steps allow 4 (15% of 40 is 6 steps)
    assert default_eval_every(40, 4 / 3) == 10
    assert default_eval_every(6, 0.67) == 6  # 6 steps allow one validation (0.9 steps): at the end
    assert default_eval_every(1000, 1.0) == 100  # a long run validates a tenth of the time anyway
    assert default_eval_every(100, 2.0) == 15  # 7 validations fit: at 15, 30, ..., 90 and the end
    cfg = validate({"data": {"train": ["t"]}, "training": {"eval_every": 1}})
    assert Watch.for_run(cfg, 6, [], validation_cost=5.0).eval_every == 1  # the config's value wins


def test_sample_is_drawn_once_from_the_validation_examples_the_loop_loaded(tmp_path, tiny_model_dir):
    from tunery.data.dataset import build_datasets
    from tunery.models.load import load_tokenizer

    paths = make_project(tmp_path, tiny_model_dir)
    cfg = load_config(paths["config"], ["eval.sample=1", "eval.graders=[exact]"]).config
    held = build_datasets(cfg, load_tokenizer(str(tiny_model_dir))).val_examples  # the loop's val_split hold-out
    references = [e.messages[-1].content for e in held]
    sample = grader_sample(cfg, held)
    assert len(held) == 2 and len(sample) == 1 and sample[0].reference in references
    assert grader_sample(cfg, held) == sample  # the same seeded draw each time
    cfg.eval.sample = 16
    assert [i.reference for i in grader_sample(cfg, held)] == references
    assert grader_sample(cfg, held)[0].prompt == [{"role": m.role, "content": m.content} for m in held[0].messages[:-1]]
    people = [booking(*p) for p in PEOPLE[:3]]
    cfg.eval.data = [str(write_jsonl(tmp_path / "other.jsonl", people))]
    assert [i.reference for i in grader_sample(cfg, held)] == [p["messages"][-1]["content"] for p in people]


def test_score_scores_greedy_answers_and_restores_training_mode(tmp_path, tiny_model_dir, monkeypatch):
    from tunery.data.dataset import load_examples
    from tunery.models.load import load_model, load_tokenizer

    examples, _ = load_examples([str(write_jsonl(tmp_path / "v.jsonl", [booking(*p) for p in PEOPLE[:4]]))])
    model, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    cfg = validate({"data": {"train": ["t"]}, "eval": {"graders": ["json_match", "json"], "max_new_tokens": 3}})
    watch = Watch(cfg, 10, 5, parse_graders(cfg.eval.graders), grader_sample(cfg, examples))
    model.train()
    real = watch.score(model, tokenizer)  # a random model: real generation
    assert model.training and real == {"score": 0.0, "json_match": 0.0, "json": 0.0, "n": 4}

    def canned(model, tokenizer, prompts, max_new_tokens, batch_size):
        assert not model.training  # answers are generated in eval mode (no dropout)
        return [reference_of(p) if i % 2 else "{broken" for i, p in enumerate(prompts)]

    monkeypatch.setattr("tunery.inference.generate_batch", canned)
    scores = watch.score(model, tokenizer)
    assert scores == {"score": 0.5, "json_match": 0.5, "json": 0.5, "n": 4} and model.training
