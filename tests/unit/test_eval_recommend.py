"""`tunery advise`'s suggestions: the task kind read from the reference answers, and what each kind and
data size gets (on the shipped examples' own files and on made-up answer lists)."""

from __future__ import annotations

import json
from pathlib import Path

from tunery.cli.evaluation import recommend_for
from tunery.eval import recommend
from tunery.eval.advise import split_for_advice
from tunery.eval.recommend import CLASSIFICATION, FREE_TEXT, JSON_TASK, profile, suggestions

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def keys(items) -> dict[str, str]:
    return {s.key: s.value for s in items}


def test_the_shipped_examples_are_read_as_their_kinds():
    items, pool, _ = split_for_advice(str(EXAMPLES / "intents" / "heldout.jsonl"),
                                      [str(EXAMPLES / "intents" / "train.jsonl")], 0.2, 20, 0)
    task, suggested = recommend_for(items, pool)
    assert (task.kind, task.examples) == (CLASSIFICATION, 260)  # 240 training + 20 evaluated
    assert task.labels == ["account", "billing", "cancel", "delivery", "refund", "technical"]
    assert keys(suggested)["eval.choices"] == "auto"
    items, pool, _ = split_for_advice(str(EXAMPLES / "quickstart" / "train.jsonl"), [], 0.2, 20, 0)
    task, suggested = recommend_for(items, pool)
    assert (task.kind, task.examples) == (JSON_TASK, 320)
    assert keys(suggested)["eval.graders"] == "[json_match]" and "eval.json_schema" in keys(suggested)
    assert "eval.choices" not in keys(suggested)


def test_json_answers_are_json_even_when_they_repeat_like_labels():
    answers = [json.dumps({"ok": i % 2 == 0}) for i in range(40)]  # 2 distinct, short, repeated
    assert profile(answers).kind == JSON_TASK


def test_sentences_and_one_off_answers_are_free_text():
    sentences = [f"Dear {n}, thank you for your order, it ships on Monday." for n in ("Ada", "Bo", "Cy")] * 20
    assert profile(sentences).kind == FREE_TEXT  # repeated, but too long to be labels
    names = [f"name{i}" for i in range(60)]  # short but each answers one example: not a label set
    assert profile(names).kind == FREE_TEXT
    assert profile(["yes", "no"] * 30).labels == ["no", "yes"]


def test_data_size_changes_the_advice():
    few = suggestions(profile(["yes", "no"] * 10))
    assert keys(few)["data"] == "more than 30 examples"
    assert "20 examples" in few[0].why and few[0].basis == "rule"
    middle = keys(suggestions(profile(["yes", "no"] * 200)))
    assert "data" not in middle and middle["training.epochs"] == "2 or more (the default is 3)"  # measured, not the size rule
    many = suggestions(profile(["yes", "no"] * 1500))
    assert keys(many)["training.epochs"] == "1"


def test_measured_suggestions_reach_only_the_kinds_they_were_measured_on(monkeypatch):
    monkeypatch.setattr(recommend, "MEASURED", [("training.lr", "5e-4", "beat 2e-4", (CLASSIFICATION,), 2000)])
    on_labels = [s for s in suggestions(profile(["a", "b"] * 50)) if s.basis == "measured"]
    assert [(s.key, s.value) for s in on_labels] == [("training.lr", "5e-4")]
    assert recommend.EVIDENCE in on_labels[0].why
    assert not [s for s in suggestions(profile([json.dumps({"x": i}) for i in range(100)])) if s.basis == "measured"]


def test_the_measured_budget_reaches_every_kind_and_the_learning_rate_labels_and_free_text():
    def measured(answers):
        return {s.key: s for s in suggestions(profile(answers)) if s.basis == "measured"}

    labels = measured(["a", "b", "c"] * 40)
    assert {k: s.value for k, s in labels.items()} == {"training.epochs": "2 or more (the default is 3)",
                                                       "training.lr": "5e-4 if the budget must stay at one epoch"}
    assert "85.6% against 66.1%" in labels["training.epochs"].why and "78.9% against 66.1%" in labels["training.lr"].why
    free = measured([f"Line number {i} of text" for i in range(120)])
    assert set(free) == {"training.epochs", "training.lr"} and "74.4% against 53.8%" in free["training.lr"].why
    assert set(measured([json.dumps({"x": i % 3}) for i in range(120)])) == {"training.epochs"}  # lr not measured
    many = suggestions(profile([f"Line number {i} of text" for i in range(3000)]))
    assert not [s for s in many if s.basis == "measured"]  # measured on 216-288 examples: the size rule applies
    assert {s.key: s.value for s in many}["training.epochs"] == "1"


def test_the_printed_block_names_the_task_and_each_basis():
    task = profile(["billing", "refund", "cancel"] * 40)
    text = recommend.format_suggestions(task, suggestions(task))
    assert text.splitlines()[0] == "Suggested for 120 examples of a classification with 3 labels (billing, cancel, refund):"
    assert "  eval.choices: auto  (rule: answers are one of the 3 labels by construction" in text
