"""Answers valid by construction: a random-weight model, constrained, can only answer a listed choice or
JSON valid against the schema; unconstrained, it answers anything."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_tiny_model
from tunery.constrain import (ANSWERS_FILE, ChoiceTrie, Constraint, answer_ids, load_constraint, resolve,
                              save_constraint)
from tunery.errors import TuneryError
from tunery.inference import generate_batch, generate_ids, stop_token_ids

WORDS = ["positive", "negative", "neutral", "billing", "refund request", "lost card", "Paris", "42", "ä ö",
         "two words", "x"]
SCHEMA = {"type": "object",
          "properties": {"label": {"enum": ["billing", "refund", "other"]}, "urgent": {"type": "boolean"},
                         "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}},
          "required": ["label", "urgent"], "additionalProperties": False}
PROMPTS = [[{"role": "user", "content": text}] for text in
           ["My card was charged twice.", "hello", "Where is my refund?", "{\"label\":", "Answer: negative"]]
JSON_CONSTRAINT = Constraint(json_schema=SCHEMA)  # compiled once for the tokenizer, as eval does for all rows
SLOW = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tokenizer():
    from tunery.models.load import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@SLOW
@given(choices=st.lists(st.sampled_from(WORDS), min_size=1, max_size=5, unique=True),
       seed=st.integers(0, 10_000), temperature=st.sampled_from([0.0, 1.5]))
def test_a_random_model_constrained_to_choices_answers_only_a_listed_choice(tokenizer, choices, seed, temperature):
    model = make_tiny_model(len(tokenizer), seed=seed)
    constraint = Constraint(choices=choices)
    answers = generate_batch(model, tokenizer, PROMPTS, max_new_tokens=12, temperature=temperature, seed=seed,
                             batch_size=3, constraint=constraint)
    assert all(a in choices for a in answers), answers


@SLOW
@given(seed=st.integers(0, 10_000), temperature=st.sampled_from([0.0, 1.0]))
def test_a_random_model_constrained_by_a_schema_answers_only_valid_json(tokenizer, seed, temperature):
    import jsonschema

    model = make_tiny_model(len(tokenizer), seed=seed)
    answers = generate_batch(model, tokenizer, PROMPTS, max_new_tokens=48, temperature=temperature, seed=seed,
                             batch_size=3, constraint=JSON_CONSTRAINT)
    for answer in answers:
        jsonschema.validate(json.loads(answer), SCHEMA)  # raises when invalid


def test_without_the_constraint_the_same_model_breaks_it(tokenizer):
    """The property above is the constraint's doing: sampled freely, the model answers other text."""
    model = make_tiny_model(len(tokenizer), seed=3)
    constraint = Constraint(choices=["positive", "negative"])
    free = generate_batch(model, tokenizer, PROMPTS, max_new_tokens=8, temperature=1.5, seed=3)
    assert not any(constraint.is_valid(a) for a in free)
    assert not any(Constraint(json_schema=SCHEMA).is_valid(a) for a in free)


def test_a_complete_choice_ends_the_answer_at_once(tokenizer):
    """'refund' is a prefix of 'refund request': both stay reachable, and each stops after its last token."""
    model = make_tiny_model(len(tokenizer), seed=1)
    stops = stop_token_ids(tokenizer, model)
    constraint = Constraint(choices=["refund", "refund request"])
    rows = generate_ids(model, tokenizer, PROMPTS, max_new_tokens=20, temperature=2.0, seed=5, constraint=constraint)
    lengths = {len(answer_ids(tokenizer, c, stops)) for c in constraint.choices}
    assert all(len(r) in lengths for r in rows)


def test_choice_ids_are_the_tokens_the_template_trains(tokenizer):
    stops = stop_token_ids(tokenizer)
    for choice in WORDS:
        ids = answer_ids(tokenizer, choice, stops)
        assert tokenizer.decode(ids) == choice
    trie = ChoiceTrie([[5, 6], [5, 7, 8]])
    assert set(trie.node_after([5])) == {6, 7} and ChoiceTrie.END in trie.node_after([5, 6])
    assert trie.node_after([6]) is None


def test_auto_choices_are_the_training_labels_and_refuse_free_text(tmp_path):
    assert resolve("auto", None, ["b", "a"]).choices == ["b", "a"]
    assert resolve(["x", " x ", "y", ""], None, None).choices == ["x", "y"]
    assert resolve(None, None, ["a"]) is None
    with pytest.raises(TuneryError, match="not a label set"):
        resolve("auto", None, [f"answer {n}" for n in range(101)])
    with pytest.raises(TuneryError, match="no training answer"):
        resolve("auto", None, [])
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    assert resolve(None, str(schema), None).json_schema == SCHEMA
    schema.write_text('{"type": 5}')
    with pytest.raises(TuneryError, match="JSON schema is not valid"):
        resolve(None, str(schema), None)


def test_the_run_folder_keeps_its_constraint(tmp_path):
    assert load_constraint(tmp_path) is None
    save_constraint(tmp_path, Constraint(choices=["a", "b"]))
    assert json.loads((tmp_path / ANSWERS_FILE).read_text()) == {"choices": ["a", "b"]}
    assert load_constraint(tmp_path).choices == ["a", "b"]
    save_constraint(tmp_path, Constraint(json_schema=SCHEMA))
    assert load_constraint(tmp_path).json_schema == SCHEMA
    assert Constraint(json_schema=SCHEMA).is_valid('{"label": "refund", "urgent": true}')
    assert not Constraint(json_schema=SCHEMA).is_valid('{"label": "refund"}')
