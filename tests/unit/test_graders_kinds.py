"""The grader kinds that read more than the answer (length_range, python, weighted sums), the record
passed to graders, failures scored 0 and reported once, and gate specs."""

from __future__ import annotations

import math

import pytest

from tunery.errors import TuneryError
from tunery.graders import (Failures, GraderFailed, Scorer, gate, parse_gate, parse_grader, parse_graders, reward,
                            rewards, score_all, score_batch)

USER_GRADERS = '''
calls = []

def starts_with_answer(completion, record):
    calls.append(record)
    return float(completion.strip().startswith(record["answer"]))

def percent(completion, record):
    return 80

def broken(completion, record):
    return record["missing"]

def not_a_number(completion, record):
    return "1"

def nan(completion, record):
    return float("nan")

def half_if_short(completion, record):
    return 0.5 if len(completion) < 5 else True
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_graders.py"
    path.write_text(USER_GRADERS)
    return path


def test_length_range_counts_words_or_characters_inclusively():
    words = parse_grader("length_range:2-3")
    assert [words.score(t) for t in ("one", "one two", "one two three", "a b c d", "  ")] == [0, 1, 1, 0, 0]
    chars = parse_grader("length_range:3-5:chars")
    assert [chars.score(t) for t in ("ab", "abc", " abcde \n", "abcdef")] == [0, 1, 1, 0]
    assert parse_grader("length_range:0-0").score("") == 1.0
    assert parse_grader("length_range:1-9:words").label == "length_range:1-9:words"
    for bad in ("length_range", "length_range:5", "length_range:5-2", "length_range:a-b", "length_range:1-2:lines"):
        with pytest.raises(TuneryError, match="MIN-MAX"):
            parse_grader(bad)


def test_python_grader_from_a_file_gets_the_record(user_file):
    grader = parse_grader(f"python:{user_file}:starts_with_answer")
    record = {"answer": "42", "messages": []}
    assert grader.score("42, because", "ignored", record) == 1.0
    assert grader.score("It is 42", None, record) == 0.0
    module = grader.param.function.__globals__
    assert module["calls"][-1] == record and module["calls"][-1] is not record  # a copy: the user cannot change it
    assert grader.label == "python:starts_with_answer"  # a long path: the function names it
    assert isinstance(grader, Scorer)


def test_python_grader_from_a_module_on_sys_path(user_file, monkeypatch):
    monkeypatch.syspath_prepend(str(user_file.parent))
    grader = parse_grader("python:my_graders:half_if_short")
    assert (grader.label, grader.score("abc"), grader.score("abcdef")) == ("python:my_graders:half_if_short", 0.5, 1.0)


def test_python_grader_load_errors_are_said_when_parsed(user_file, tmp_path):
    cases = {"python": "needs TARGET:FUNCTION", f"python:{user_file}": "needs TARGET:FUNCTION",
             "python:nowhere.py:f": "file not found", "python:no_such_module_xyz:f": "no module named",
             f"python:{user_file}:absent": "has no function 'absent'"}
    for spec, message in cases.items():
        with pytest.raises(TuneryError, match=message):
            parse_grader(spec)
    crashing = tmp_path / "crash.py"
    crashing.write_text("raise RuntimeError('import time')\n")
    with pytest.raises(TuneryError, match="running .*crash.py failed") as err:
        parse_grader(f"python:{crashing}:f")
    assert "RuntimeError: import time" in err.value.render()


def test_python_grader_bad_results_fail_that_record_and_are_not_clipped(user_file):
    messages = {"percent": "returned 80, outside 0..1", "broken": "raised KeyError: 'missing'",
                "not_a_number": "returned '1', not a number", "nan": "returned nan, not a number"}
    for name, message in messages.items():
        with pytest.raises(GraderFailed, match=message):
            parse_grader(f"python:{user_file}:{name}").score("x", None, {})


def test_a_failing_record_scores_zero_and_is_reported_once_with_its_location(user_file):
    said = []
    failures = Failures(said.append)
    grader = parse_grader(f"python:{user_file}:starts_with_answer")
    records = [{"answer": "1"}, {}, {"answer": "3"}, {}]
    got = score_batch(grader, ["1", "2", "3", "4"], None, records, ["f:1", "f:2", "f:3", "f:4"], failures)
    assert got == [1.0, 0.0, 1.0, 0.0]
    assert len(said) == 1 and said[0].startswith("warning: grader python:starts_with_answer failed on f:2 (")
    assert "KeyError: 'answer'" in said[0]
    assert failures.to_json() == {"python:starts_with_answer": {"count": 2, "first": "f:2: python:" + str(
        grader.arg) + " raised KeyError: 'answer'"}}
    assert score_all([grader, parse_grader("exact")], "1", "1", {}, "f:9", failures) == {
        "python:starts_with_answer": 0.0, "exact": 1.0}
    assert failures.by_label["python:starts_with_answer"]["count"] == 3 and len(said) == 1


def test_weighted_sums_from_a_string_and_from_a_list():
    text = parse_grader("0.7*exact+0.3*json")
    as_list = parse_grader([{"type": "exact", "weight": 0.7}, {"type": "json", "weight": 0.3}])
    assert text.label == as_list.label == "0.7*exact+0.3*json" and text.spec == "0.7*exact+0.3*json"
    for grader in (text, as_list):
        assert grader.score('{"a": 1}', '{"a": 1}') == pytest.approx(1.0)
        assert grader.score('{"a":1}', '{"a": 1}') == pytest.approx(0.3)
        assert grader.score("nope", "nope") == pytest.approx(0.7)
        assert grader.score("x", "y") == 0.0
    mixed = parse_grader(["2*contains:Paris", {"type": "max_words", "value": 3, "weight": 2}])
    assert mixed.label == "2*contains:Paris+2*max_words:3" and mixed.score("Paris, France") == 1.0
    assert mixed.score("It is Paris of course") == 0.5
    regex = parse_grader("0.5*regex:^a+b$+0.5*exact")  # a '+' without WEIGHT* after it stays in the regex
    assert regex.score("aab", "x") == 0.5 and regex.terms[0][1].arg == "^a+b$"


def test_weighted_sum_errors_say_how_to_write_them():
    cases = {"0.7*exact+json": "unknown grader 'exact\\+json'.*needs its weight",
             "0*exact": "weight must be a number above 0", "0.5*exat": "did you mean exact"}
    for spec, message in cases.items():
        with pytest.raises(TuneryError, match=message):
            parse_grader(spec)
    with pytest.raises(TuneryError, match="needs a 'weight'"):
        parse_grader([{"type": "exact"}])
    with pytest.raises(TuneryError, match="sums do not nest"):
        parse_grader([["0.5*exact"]])
    with pytest.raises(TuneryError, match="a weight belongs to a term of a weighted sum"):
        parse_graders([{"type": "exact", "weight": 0.7}, {"type": "json", "weight": 0.3}])


def test_a_term_that_fails_fails_the_whole_sum_on_that_record(user_file):
    grader = parse_grader(f"0.5*exact+0.5*python:{user_file}:starts_with_answer")
    failures = Failures(lambda _m: None)
    assert score_batch(grader, ["1", "1"], ["1", "1"], [{"answer": "1"}, {}], ["a:1", "a:2"], failures) == [1.0, 0.0]
    assert list(failures.to_json()) == [grader.label] and failures.to_json()[grader.label]["first"].startswith("a:2:")


def test_labels_stay_unique_across_kinds_and_rewards_use_a_weighted_grader():
    graders = parse_graders(["0.5*exact+0.5*json", "0.5*exact+0.5*json", "length_range:1-3"])
    assert [g.label for g in graders] == ["0.5*exact+0.5*json", "0.5*exact+0.5*json#2", "length_range:1-3"]
    assert rewards(graders[0], ['{"a": 1}', "[1]", "x"], ['{"a": 1}', "[2]", "y"]) == [1.0, 0.5, 0.0]
    assert reward(graders, "[1]", "[1]") == pytest.approx(1.0)
    assert reward(graders, "x y z w", "q") == 0.0


def test_command_line_lists_keep_a_weighted_sum_with_free_text_whole():
    from tunery.graders import split_spec_list

    assert split_spec_list("0.5*exact+0.5*json,length_range:1-5") == ["0.5*exact+0.5*json", "length_range:1-5"]
    assert split_spec_list("0.5*regex:^a,b$+0.5*exact") == ["0.5*regex:^a,b$+0.5*exact"]


def test_gate_specs():
    assert parse_gate("exact>=0.8") == ("exact", 0.8)
    assert parse_gate(" 0.7*exact+0.3*json >= 95% ") == ("0.7*exact+0.3*json", 0.95)
    assert parse_gate("code_tests:5>=1") == ("code_tests:5", 1.0)
    for bad in ("exact>0.8", "exact>=1.5", "exact", ">=0.5", "exact>=x"):
        with pytest.raises(TuneryError, match="LABEL>=NUMBER"):
            parse_gate(bad)
    assert gate({"exact": 0.8}, dict([parse_gate("exact>=0.8")])) == (True, [])
    assert gate({"exact": 0.79}, dict([parse_gate("exact>=80%")])) == (False, ["exact: 0.790 < 0.800"])


def test_every_new_kind_validates_in_a_training_config(user_file):
    from tunery.config.load import validate

    graders = ["length_range:1-50", f"python:{user_file}:starts_with_answer", "code_tests:5", "0.7*exact+0.3*json",
               [{"type": "exact", "weight": 0.7}, {"type": "json", "weight": 0.3}]]
    cfg = validate({"data": {"train": ["t.jsonl"]}, "eval": {"graders": graders}})
    assert cfg.eval.graders == graders
    assert [g.label for g in parse_graders(cfg.eval.graders)][-1] == "0.7*exact+0.3*json#2"
    for bad, message in (("length_range:9-1", "MIN-MAX"), ("python:nowhere.py:f", "file not found"),
                         ("code_tests:0", "time limit"), ("0.5*exact+json", "needs its weight")):
        with pytest.raises(TuneryError, match=message):
            validate({"data": {"train": ["t.jsonl"]}, "eval": {"graders": [bad]}})


def test_records_are_optional_for_graders_that_do_not_read_them():
    # The old two-argument calls keep working for every kind that needs no record.
    for spec, answer, ref in (("exact", "a", "a"), ("numeric:0.5", "3.2", "3"), ("length_range:1-2", "a b", None)):
        assert parse_grader(spec).score(answer, ref) == 1.0
    assert math.isclose(parse_grader("0.25*exact+0.75*contains:b").score("b", "a"), 0.75)
