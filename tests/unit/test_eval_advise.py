"""The advice sentence on fixed per-example scores (each rule of `advise.py`), and the advice split."""

from __future__ import annotations

import pytest

from eval_helpers import PEOPLE, booking, write_jsonl
from tunery.errors import TuneryError
from tunery.eval import aggregate
from tunery.eval.advise import split_for_advice, summary_sentence


def result_of(scores: dict[tuple[str, bool, str], list[int]], forgetting: dict | None = None) -> dict:
    """A result dict as `evaluate` builds it, from (name, tuned, prompting) -> pass/fail per example."""
    rows = []
    for (name, tuned, prompting), passed in scores.items():
        row = {"system": {"name": name, "tuned": tuned, "prompting": prompting, "model": "runs/x" if tuned else "m"},
               "per_example": [{"scores": {"exact": float(p)}, "seconds": 1.0, "tokens": 3} for p in passed]}
        rows.append(aggregate.summarize(row, ["exact"]))
    best, comparisons = aggregate.best_and_comparisons(rows, "exact")
    n = len(next(iter(scores.values())))
    return {"systems": rows, "primary": "exact", "n_examples": n, "best": best["system"]["name"],
            "comparisons": comparisons, "forgetting": forgetting or {}}


def test_a_clear_winner_is_named_with_its_interval_and_test():
    sentence = summary_sentence(result_of({
        ("tuned", True, "zero-shot"): [1] * 18 + [0] * 2,
        ("base zero-shot", False, "zero-shot"): [0] * 20,
        ("base retrieval (bm25, k=3)", False, "retrieval"): [1] * 5 + [0] * 15,
    }))
    assert sentence == ("The evidence favours fine-tuning: tuned 90% (95% CI 75%-100%) exact on 20 examples, "
                        "significantly above the next best, base retrieval (bm25, k=3) 25% (95% CI 10%-45%) "
                        "(McNemar p=0.00024).")  # 13 wins to 0: p = 2 / 2**13


def test_a_cheaper_system_that_is_as_good_is_favoured():
    sentence = summary_sentence(result_of({
        ("tuned", True, "zero-shot"): [1] * 19 + [0],
        ("base retrieval (bm25, k=3)", False, "retrieval"): [1] * 18 + [0] * 2,
        ("base zero-shot", False, "zero-shot"): [0] * 20,
    }))
    assert sentence.startswith("The evidence favours retrieval-augmented prompting: base retrieval (bm25, k=3) 90% ")
    assert "is within 5% of the best, tuned 95% (95% CI 85%-100%), with no significant difference (McNemar p=1)" in sentence


def test_too_few_examples_lean_and_say_so_and_forgetting_is_a_cost():
    forgetting = {"runs/x": {"before": {"mean": 0.6}, "after": {"mean": 0.3},
                             "test": {"test": "mcnemar_exact", "p": 0.004, "diff": -0.3, "significant": True}}}
    sentence = summary_sentence(result_of({
        ("tuned", True, "zero-shot"): [1, 1, 1, 0],
        ("base few-shot (k=3)", False, "few-shot"): [0, 1, 0, 0],
    }, forgetting))
    assert sentence == ("The evidence leans to fine-tuning: tuned 75% (95% CI 25%-100%) exact on 4 examples against "
                        "base few-shot (k=3) 25% (95% CI 0%-75%), but the difference is not significant "
                        "(McNemar p=0.5); evaluate more examples to be sure; but it cost general ability: the "
                        "probe fell from 60% to 30% (McNemar p=0.004); to keep it, train with data.replay: self "
                        "(replay_share 0.15, replay_mode extend, replay_weight 4, replay_answer_tokens 16: "
                        "docs/forgetting.md) or "
                        "training.kl_to_base.")


def test_without_a_tuned_model_the_gap_left_is_stated():
    sentence = summary_sentence(result_of({
        ("base zero-shot", False, "zero-shot"): [0] * 10,
        ("base few-shot (k=3)", False, "few-shot"): [1] * 6 + [0] * 4,
    }))
    assert sentence.endswith("(McNemar p=0.031); 40% of answers still miss, so fine-tuning is worth trying if "
                             "that is too many.")
    nothing = summary_sentence(result_of({("a", False, "zero-shot"): [0, 0], ("b", False, "few-shot"): [0, 0]}))
    assert nothing.startswith("No approach passed any of the 2 examples on exact (2 systems tried)")


def test_advice_split_holds_out_a_seeded_share_and_keeps_the_rest_as_the_pool(tmp_path):
    data = write_jsonl(tmp_path / "all.jsonl", [booking(*p) for p in PEOPLE])
    items, pool, files = split_for_advice(str(data), [], holdout=0.25, limit=20, seed=0)
    assert len(items) == 3 and len(pool) == 9 and files == [str(data)]
    assert not {i.id for i in items} & {e.location for e in pool}
    again, _, _ = split_for_advice(str(data), [], holdout=0.25, limit=20, seed=0)
    assert [i.id for i in again] == [i.id for i in items]
    capped, _, _ = split_for_advice(str(data), [], holdout=0.9, limit=2, seed=0)
    assert len(capped) == 2
    train = write_jsonl(tmp_path / "train.jsonl", [booking(*p) for p in PEOPLE[:5]])
    items, pool, files = split_for_advice(str(data), [str(train)], holdout=0.25, limit=4, seed=0)
    assert (len(items), len(pool), files) == (4, 5, [str(train)])
    with pytest.raises(TuneryError, match="advice needs at least 4"):
        split_for_advice(str(write_jsonl(tmp_path / "few.jsonl", [booking(*PEOPLE[0])])), [], 0.2, 5, 0)


def test_a_large_probe_drop_is_warned_about_even_before_it_is_significant():
    from tunery.eval.evaluate import _warnings

    probe = {"before": {"mean": 0.533}, "after": {"mean": 0.333}, "lost": 9, "gained": 3,
             "test": {"diff": -0.2, "p": 0.146, "significant": False}}
    result = {"leakage": {"warning": None}, "overfitting": {}, "forgetting": {"runs/q": probe}, "n_examples": 40}
    assert _warnings(result) == ["runs/q: the general-ability probe fell from 53% to 33% (9 items lost, 3 gained; "
                                 "p=0.15, not significant): see the probe items that changed in the report"]
    probe["test"] = {"diff": -0.05, "p": 0.6, "significant": False}
    assert _warnings(result) == []
