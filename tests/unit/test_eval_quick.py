"""Exact-match scoring on hand-made strings, and the held-out file reader."""

from __future__ import annotations

import json

import pytest

from tunery.errors import TuneryError
from tunery.eval import quick
from tunery.eval.quick import exact_match, format_table, normalize, read_heldout, score

REF = '{"name": "Ana Costa", "city": "Lima", "nights": 3}'


def test_only_outer_whitespace_and_crlf_are_forgiven():
    assert normalize("  a b\r\nc \n") == "a b\nc"
    assert exact_match(REF + "\n", REF)
    assert exact_match("\t " + REF, REF)
    assert not exact_match(REF.replace(", ", ","), REF)  # compact separators are another format
    assert not exact_match(REF.replace("3", '"3"'), REF)  # a string is not a number
    assert not exact_match(REF.replace('"city": "Lima", ', "") , REF)
    assert not exact_match('{"city": "Lima", "name": "Ana Costa", "nights": 3}', REF)  # key order
    assert not exact_match("```json\n" + REF + "\n```", REF)


def test_score_counts_and_rate():
    got = score([REF, REF + " ", "no", REF.lower()], [REF, REF, REF, REF])
    assert got == {"exact_match": 0.5, "correct": 2, "count": 4}
    assert score([], []) == {"exact_match": 0.0, "correct": 0, "count": 0}
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        score(["a", "b"], ["a"])


def write(tmp_path, records):
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n", encoding="utf-8")
    return path


def test_reader_uses_the_last_assistant_turn_as_reference(tmp_path):
    first = {"messages": [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]}
    second = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]}
    prompts, refs = read_heldout(write(tmp_path, [first, second]))
    assert refs == ["a2", "r"]
    assert [m["content"] for m in prompts[0]] == ["S", "q1", "a1", "q2"]
    assert prompts[1] == [{"role": "user", "content": "q"}]


def test_reader_errors_name_the_line(tmp_path):
    no_answer = {"messages": [{"role": "user", "content": "q"}]}
    ok = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]}
    with pytest.raises(TuneryError, match=r"heldout.jsonl:2: needs a prompt followed by an assistant"):
        read_heldout(write(tmp_path, [ok, no_answer]))
    with pytest.raises(TuneryError, match=r"heldout.jsonl:1: not a `messages` record"):
        read_heldout(write(tmp_path, [{"prompt": "q", "completion": "r"}]))


def test_table_rows_with_fixed_answers(tmp_path, monkeypatch):
    records = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"r{i}"}]}
        for i in range(4)
    ]
    path = write(tmp_path, records)
    canned = {"base": ["x", "r1", "y", "z"], "tuned": ["r0", "r1 ", "r2", "no"]}
    monkeypatch.setattr("tunery.inference.load_for_inference", lambda target: (target, None))
    monkeypatch.setattr(
        "tunery.inference.generate_batch", lambda model, tok, prompts, max_new_tokens: canned[model]
    )
    rows = quick.exact_match_table(["base", "tuned"], path, max_new_tokens=8)
    assert [(r["target"], r["correct"], r["count"], r["exact_match"]) for r in rows] == [
        ("base", 1, 4, 0.25), ("tuned", 3, 4, 0.75),
    ]
    assert rows[1]["examples"][0] == {"prompt": "q0", "reference": "r0", "answer": "r0"}
    assert len(rows[0]["examples"]) == 3
    assert format_table(rows).splitlines()[2:] == ["base    25.0% (1/4)", "tuned   75.0% (3/4)"]
