"""Graders scored inside the training loop: metrics lines, early stopping on a grader, best weights, resume."""

from __future__ import annotations

import json

import pytest
import torch

from eval_helpers import make_project
from loop_helpers import make_loop, synthetic_rows, tiny_config
from tunery.config.load import validate
from tunery.errors import TuneryError
from tunery.graders import parse_graders
from tunery.models import adapters
from tunery.runfolder import RunFolder
from tunery.trainers import checkpoint as ckpt
from tunery.trainers import loop as sft
from tunery.trainers.watch import Watch

# Scores the scripted grader returns after each step: best at step 2, never beaten by more than 0.05.
SCRIPT = {1: 0.2, 2: 0.5, 3: 0.52, 4: 0.4, 5: 0.9, 6: 0.9}


def grader_setup(tok, patience=2, watch="grader", **training):
    cfg = tiny_config(max_steps=6, eval_every=1, early_stopping_patience=patience, keep_checkpoints=1, **training)
    s = make_loop(tok, cfg, synthetic_rows(10), synthetic_rows(4, seed=1))
    # The synthetic rows have no examples to draw a sample from: the sample is given, the scores scripted.
    watched = cfg.model_copy(update={"eval": cfg.eval.model_copy(
        update={"graders": ["exact"], "early_stopping_on": watch, "min_delta": 0.05})})
    s.watch = Watch(watched, s.plan.total_steps, s.watch.eval_every, parse_graders(["exact"]), ["one", "two"])
    return s


@pytest.fixture
def scripted(monkeypatch):
    """Watch.score returns SCRIPT's score for the current step, and records the model's mode."""
    calls = []

    def fake(watch, model, tokenizer):
        calls.append(model.training)
        step = len(calls)
        return {"score": SCRIPT[step], "exact": SCRIPT[step], "n": len(watch.items)}

    monkeypatch.setattr(Watch, "score", fake)
    return calls


def test_early_stopping_on_a_grader_keeps_the_best_scoring_weights(smol_tokenizer, tmp_path, scripted):
    s = grader_setup(smol_tokenizer)
    st, reason = sft.train(s, RunFolder(tmp_path), sft.LoopState(), lambda: False)
    # 0.52 at step 3 is not better than 0.5 by more than min_delta 0.05; 0.4 at step 4 neither: patience 2.
    assert (reason, st.step, st.best_step, st.best_score, st.evals_since_best) == ("early_stopped", 4, 2, 0.5, 2)
    graded = [m for m in RunFolder(tmp_path).read_metrics() if m["kind"] == "grader"]
    assert [(m["step"], m["score"], m["best"], m["n"]) for m in graded] == [
        (1, 0.2, True, 2), (2, 0.5, True, 2), (3, 0.52, False, 2), (4, 0.4, False, 2)]
    assert s.watch.describe_best(st) == "best exact 0.500 at step 2"
    best = ckpt.load_checkpoint(ckpt.step_dir(tmp_path / "checkpoints", 2))[0]
    sft.restore_best(s, RunFolder(tmp_path), st)
    restored = adapters.trainable_state(s.model)
    assert all(torch.equal(restored[k], best[k]) for k in best)


def test_watching_the_loss_records_grader_scores_without_stopping_on_them(smol_tokenizer, tmp_path, scripted):
    s = grader_setup(smol_tokenizer, patience=None, watch="val_loss")
    st, reason = sft.train(s, RunFolder(tmp_path), sft.LoopState(), lambda: False)
    assert reason == "finished" and st.step == 6 and st.best_score == 0.9
    evals = {m["step"]: m["val_loss"] for m in RunFolder(tmp_path).read_metrics() if m["kind"] == "eval"}
    assert st.best_step == min(evals, key=evals.get)  # the best step follows the validation loss


def test_grader_early_stopping_resumes_where_it_would_have_stopped(smol_tokenizer, tmp_path, monkeypatch):
    script = iter([0.2, 0.5, 0.52, 0.4] * 2)
    monkeypatch.setattr(Watch, "score", lambda *a: (lambda v: {"score": v, "exact": v, "n": 2})(next(script)))
    first = grader_setup(smol_tokenizer, save_every=1)
    calls = []
    st, reason = sft.train(first, RunFolder(tmp_path), sft.LoopState(), lambda: calls.append(1) or len(calls) >= 3)
    assert (reason, st.step) == ("interrupted", 3)
    # A new process: the best score and the patience count come back from the checkpoint.
    monkeypatch.setattr(Watch, "score", lambda *a: {"score": 0.4, "exact": 0.4, "n": 2})
    second = grader_setup(smol_tokenizer, save_every=1)
    st2 = sft.resume(second, ckpt.step_dir(tmp_path / "checkpoints", 3))
    assert (st2.best_score, st2.best_step, st2.evals_since_best) == (0.5, 2, 1)
    st2, reason = sft.train(second, RunFolder(tmp_path), st2, lambda: False)
    assert (reason, st2.step, st2.best_step) == ("early_stopped", 4, 2)


def test_watching_a_grader_needs_one_and_examples_to_score(tmp_path):
    with pytest.raises(TuneryError, match="eval.graders is empty"):
        validate({"data": {"train": ["t.jsonl"]}, "eval": {"early_stopping_on": "grader"}})
    (tmp_path / "t.jsonl").write_text(json.dumps({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n")
    cfg = validate({"data": {"train": [str(tmp_path / "t.jsonl")], "val_split": 0.0}, "eval": {"graders": ["exact"]}})
    with pytest.raises(TuneryError, match="no examples to score during training"):
        Watch.for_run(cfg, 10, val_examples=[])


def test_a_real_run_scores_its_validation_sample_with_real_generation(tmp_path, tiny_model_dir):
    from tunery.trainers.run import train_from_config

    paths = make_project(tmp_path, tiny_model_dir)
    code = train_from_config(paths["config"], ["eval.graders=[json_match, json]", "eval.sample=2",
                                               "eval.max_new_tokens=4", "eval.early_stopping_on=grader",
                                               f"output.dir={tmp_path / 'runs'}", "training.preflight=false"])
    assert code == 0
    run = RunFolder(tmp_path / "runs" / "run")
    graded = [m for m in run.read_metrics() if m["kind"] == "grader"]
    # A random tiny model writes no JSON in 4 tokens: both graders score 0 on the 2 held-out examples.
    assert [(m["step"], m["json_match"], m["json"], m["n"]) for m in graded] == [(1, 0.0, 0.0, 2), (2, 0.0, 0.0, 2)]
    info = run.read_info()
    assert (info["watched"], info["best_score"], info["best_step"]) == ("grader", 0.0, 1)
    assert "- best grader score: 0.000 at step 1 (early stopping watched it)" in run.summary.read_text()
