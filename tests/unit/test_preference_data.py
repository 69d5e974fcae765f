"""Preference, feedback and prompt records: every accepted form gives the same normal form, and every
bad record is reported with its line, all at once."""

from __future__ import annotations

import pytest

from pref_helpers import write_jsonl
from tunery.data.messages import Message
from tunery.data.preference import load_records

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "What is 2 plus 3?"}
GOOD = {"role": "assistant", "content": "5."}
BAD = {"role": "assistant", "content": "7, I think."}


def test_every_pair_form_gives_the_same_pair(tmp_path):
    records = [
        {"prompt": "What is 2 plus 3?", "chosen": "5.", "rejected": "7, I think."},  # TRL, strings
        {"prompt": [SYSTEM, USER], "chosen": [GOOD], "rejected": [BAD]},  # TRL, conversational
        {"chosen": [SYSTEM, USER, GOOD], "rejected": [SYSTEM, USER, BAD]},  # TRL, implicit prompt
        {"input": {"messages": [SYSTEM, USER]}, "preferred_output": [GOOD], "non_preferred_output": [BAD],
         "margin": 2},  # OpenAI's preference JSONL
    ]
    pairs, problems = load_records([write_jsonl(tmp_path / "p.jsonl", records)], "pairs")
    assert problems == [] and [p.line for p in pairs] == [1, 2, 3, 4]
    assert pairs[0].prompt == [Message("user", "What is 2 plus 3?")]
    assert all(p.prompt == [Message("system", "Be brief."), Message("user", "What is 2 plus 3?")] for p in pairs[1:])
    assert {(p.chosen[0].content, p.rejected[0].content) for p in pairs} == {("5.", "7, I think.")}
    assert [p.margin for p in pairs] == [None, None, None, 2.0]
    assert pairs[2].conversation("rejected").messages[-1] == Message("assistant", "7, I think.")


def test_bad_pairs_are_all_reported_with_their_lines(tmp_path):
    records = [
        {"prompt": "Q?", "chosen": "A.", "rejected": "A. "},  # the same answer
        {"prompt": "Q?", "chosen": "", "rejected": "B."},  # an empty side
        {"chosen": [USER, GOOD], "rejected": [{"role": "user", "content": "Other?"}, BAD]},  # prompts differ
        {"prompt": "Q?", "chosen": "A.", "rejected": "B.", "margin": "big"},
        {"prompt": [USER, GOOD], "chosen": "A.", "rejected": "B."},  # prompt ends on the answer
        {"prompt": "Q?", "chosen": [USER], "rejected": "B."},  # a side that is not the assistant's
        {"prompt": "Q?", "chosen": "A.", "rejected": "B."},  # fine
    ]
    pairs, problems = load_records([write_jsonl(tmp_path / "p.jsonl", records)], "pairs")
    assert [p.line for p in pairs] == [7]
    assert [(p.line, p.kind) for p in problems] == [
        (1, "identical_pair"), (2, "empty_content"), (3, "prompt_mismatch"), (4, "wrong_type"),
        (5, "last_turn_not_user"), (6, "unknown_role")]
    assert "different prompts" in problems[2].reason and problems[2].file.endswith("p.jsonl")


def test_feedback_and_prompt_records(tmp_path):
    feedback = [{"prompt": "Q?", "completion": "A.", "label": True}, {"prompt": "Q?", "completion": "B.", "label": "no"},
                {"prompt": "Q?", "completion": "C."}]
    examples, problems = load_records([write_jsonl(tmp_path / "f.jsonl", feedback)], "feedback")
    assert [(e.line, e.desirable) for e in examples] == [(1, True)]
    assert [(p.line, p.kind) for p in problems] == [(2, "wrong_type"), (3, "missing_key")]
    prompts = [{"prompt": "What is 6 times 7?", "answer": "42"}, {"messages": [SYSTEM, USER], "tests": "assert 1"},
               {"messages": [USER, GOOD]}]
    examples, problems = load_records([write_jsonl(tmp_path / "r.jsonl", prompts)], "prompts")
    assert [e.fields for e in examples] == [{"answer": "42"}, {"tests": "assert 1"}]
    assert examples[1].prompt[-1] == Message("user", "What is 2 plus 3?")
    assert [(p.line, p.kind) for p in problems] == [(3, "last_turn_not_user")]


@pytest.mark.parametrize("kind", ["pairs", "feedback", "prompts"])
def test_an_empty_or_missing_file_is_one_problem(tmp_path, kind):
    (tmp_path / "e.jsonl").write_text("")
    _, problems = load_records([str(tmp_path / "e.jsonl"), str(tmp_path / "missing.jsonl")], kind)
    assert [p.kind for p in problems] == ["empty_file", "file_not_found"]
