"""`tunery data from-log` on hand-written logs: each filter, corrections, duplicates, secrets, torn lines."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from tunery.errors import TuneryError
from tunery.serve.fromlog import FromLogOptions, convert_log, parse_when, secret_in


def exchange(i: int, answer: str = "ok", model: str = "a", time: str = "2026-11-20T10:00:00.000Z",
             finish: str = "stop", user: str | None = None) -> dict:
    return {"type": "exchange", "id": f"chatcmpl-{i}", "time": time, "model": model, "finish_reason": finish,
            "messages": [{"role": "user", "content": user or f"question {i}"}, {"role": "assistant", "content": answer}]}


def write_log(path, records, torn: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + torn)


def convert(tmp_path, records, torn="", **options):
    log = tmp_path / "log.jsonl"
    write_log(log, records, torn)
    report = convert_log(log, tmp_path / "out.jsonl", FromLogOptions(**options))
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    return report, rows


def test_each_filter_drops_what_it_names(tmp_path):
    records = [exchange(0), exchange(1, model="b"), exchange(2, time="2026-11-01T09:00:00Z"),
               exchange(3, finish="length"), exchange(4, answer="  "), exchange(5, user="question 0"),
               exchange(6, finish="error"), {"type": "exchange", "id": "x", "model": "a", "time": "2026-11-20T10:00:00Z", "messages": "nope",
                "finish_reason": "stop"}]
    report, rows = convert(tmp_path, records, torn='{"type": "exchange", "id": "chatcmpl-9", "mess',
                           models=("a",), since=parse_when("2026-11-10"))
    assert [r["messages"][0]["content"] for r in rows] == ["question 0"]
    assert report.dropped == {"other model": 1, "before --since": 1, "answer cut by max_tokens": 1,
                              "empty answer": 1, "duplicate": 1, "answer did not end": 1,
                              "unreadable line": 1, "no readable messages": 1}
    assert report.exchanges == 8 and report.lines == 9 and report.written == 1


def test_feedback_selects_and_a_correction_replaces_the_answer(tmp_path):
    records = [exchange(0), exchange(1), exchange(2), exchange(3, finish="length"),
               {"type": "feedback", "id": "chatcmpl-0", "rating": "good"},
               {"type": "feedback", "id": "chatcmpl-1", "rating": "good"},
               {"type": "feedback", "id": "chatcmpl-1", "rating": "bad"},  # the last word counts
               {"type": "feedback", "id": "chatcmpl-3", "correction": "fixed"}]
    expected = {"not-bad": ["question 0", "question 2", "question 3"], "good": ["question 0", "question 3"],
                "bad": ["question 1"], "any": ["question 0", "question 1", "question 2", "question 3"]}
    for choice, questions in expected.items():
        _, rows = convert(tmp_path, records, feedback=choice)
        assert [r["messages"][0]["content"] for r in rows] == questions, choice
    _, rows = convert(tmp_path, records, feedback="good")
    assert rows[-1]["messages"][-1] == {"role": "assistant", "content": "fixed"}
    assert set(rows[0]) == {"messages"}


@pytest.mark.parametrize("text,kind", [
    ("my key sk-abcdefghijklmnopqrstuvwx1234", "openai_key"),
    ("AKIAIOSFODNN7EXAMPLE is the id", "aws_access_key"),
    ("token ghp_" + "a" * 36, "github_token"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIE", "private_key"),
    ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz.123", "bearer_token"),
    ("password = hunter2hunter2", "password_assignment"),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "jwt"),
])
def test_secret_looking_strings_are_found_and_their_exchange_dropped(tmp_path, text, kind):
    assert secret_in([text]) == kind
    report, rows = convert(tmp_path, [exchange(0, user=text), exchange(1)])
    assert len(rows) == 1 and report.dropped == {f"looks like a secret ({kind})": 1}


def test_plain_text_is_not_a_secret():
    for text in ["The password policy needs 12 characters.", "sk-learn is a library", "Book 4 nights in Oslo.",
                 '{"name": "Ben Kato", "city": "Bologna", "nights": 4}']:
        assert secret_in([text]) is None


def test_dates_and_errors():
    assert parse_when("2026-11-20") == datetime(2026, 11, 20, tzinfo=timezone.utc)
    assert parse_when("2026-11-20", end=True).hour == 23
    assert parse_when("2026-11-20T10:00:00Z") == datetime(2026, 11, 20, 10, tzinfo=timezone.utc)
    with pytest.raises(TuneryError, match="is not a date"):
        parse_when("yesterday")
    with pytest.raises(TuneryError, match="request log not found"):
        convert_log("/no/such/log.jsonl", "/tmp/x.jsonl", FromLogOptions())


def test_until_is_inclusive_of_its_day(tmp_path):
    records = [exchange(0, time="2026-11-20T23:59:00Z"), exchange(1, time="2026-11-21T00:00:01Z")]
    report, rows = convert(tmp_path, records, until=parse_when("2026-11-20", end=True))
    assert len(rows) == 1 and report.dropped == {"after --until": 1}
