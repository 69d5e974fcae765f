"""Leakage (exact and near-duplicate overlap) and overfitting signals on hand-made data."""

from __future__ import annotations

import pytest

from eval_helpers import METRICS
from tunery.data.messages import Example, Message
from tunery.eval.items import EvalItem, as_dicts
from tunery.eval.signals import jaccard, leakage, loss_gap, nearest_training, overfitting, shingles


def ex(line: int, question: str, answer: str, source: str = "train.jsonl") -> Example:
    return Example(source, line, messages=[Message("system", "S"), Message("user", question), Message("assistant", answer)])


def item(question: str, answer: str) -> EvalItem:
    e = ex(1, question, answer, "eval.jsonl")
    return EvalItem(e.location, as_dicts(e.messages[:-1]), answer, e)


def test_shingles_and_jaccard():
    assert shingles("abcdef", 5) == {"abcde", "bcdef"}
    assert shingles("ab", 5) == {"ab"}
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3) and jaccard(set(), set()) == 0.0


def test_exact_and_near_duplicates_are_found_and_warned_about():
    pool = [ex(1, "Book a room in Oslo for Ana Costa, 3 nights, near the central station please.", "A"), ex(2, "What is 2 + 2?", "4"),
            ex(3, "Tell me a joke about cats and dogs please.", "No.")]
    items = [item("book a room in  Oslo for Ana Costa, 3 nights, near the central station please.", "A"),
             item("Book a room in Oslo for Ana Costa, 4 nights, near the central station please.", "A"),
             item("Translate 'house' to German.", "Haus")]
    near = nearest_training(items, pool)
    assert near[0] == (1.0, 0) and near[1][1] == 0 and 0.8 < near[1][0] < 1.0 and near[2][0] < 0.2
    found = leakage(items, pool)
    assert (found["exact"], found["near"]) == (1, 1)
    assert [(p["eval"], p["train"], p["exact"]) for p in found["pairs"]] == [
        ("eval.jsonl:1", "train.jsonl:1", True), ("eval.jsonl:1", "train.jsonl:1", False)]
    assert found["warning"].startswith("1 evaluation example(s) also appear in the training data and 1 more are near")
    assert leakage(items[2:], pool)["warning"] is None
    assert leakage(items, [])["checked"] is False


def test_loss_gap_and_overfitting_warning():
    points = loss_gap(METRICS)
    assert [(p["step"], p["val_loss"]) for p in points] == [(2, 1.2), (4, 1.0), (6, 1.1), (8, 1.3)]
    assert [p["train_loss"] for p in points] == pytest.approx([1.7, 1.3, 0.9, 0.5])
    assert points[-1]["gap"] == pytest.approx(0.8)
    assert overfitting(METRICS)["warning"] == (
        "validation loss rose from 1.000 (step 4) to 1.300 (step 8) while training loss fell to 0.500: signs "
        "of overfitting (the best weights were kept; fewer steps or more data would help)")
    healthy = [m for m in METRICS if m.get("step", 0) <= 4]
    assert overfitting(healthy)["warning"] is None
    assert overfitting(METRICS, rise=0.5)["warning"] is None  # 30% above best is under a 50% bar
    assert overfitting([])["points"] == []
