"""File readers: every file type gives the same examples, with the line numbers a user's editor shows."""

from __future__ import annotations

import json

import pytest

from tunery.data.dataset import load_examples
from tunery.data.messages import Message
from tunery.data.readers import read_records

CHAT = {"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]}
CHAT2 = {"messages": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]}


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_jsonl_lines_skip_blanks_and_report_bad_json(tmp_path):
    path = write(
        tmp_path / "t.jsonl",
        json.dumps(CHAT) + "\n\n" + '{"messages": [\n' + json.dumps(CHAT2) + "\n",
    )
    records, problems = read_records(path)
    assert [line for line, _ in records] == [1, 4]
    assert [(p.line, p.kind) for p in problems] == [(3, "invalid_json")]
    assert problems[0].reason == "invalid JSON: Expecting value (column 15)"


def test_jsonl_with_byte_order_mark(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(CHAT).encode())
    examples, problems = load_examples([str(path)])
    assert problems == [] and examples[0].messages[1] == Message("assistant", "A1")


def test_json_array_line_is_index_plus_one(tmp_path):
    path = write(tmp_path / "t.json", json.dumps([CHAT, {"messages": "bad"}, CHAT2]))
    examples, problems = load_examples([path])
    assert [e.line for e in examples] == [1, 3]
    assert [(p.line, p.kind) for p in problems] == [(2, "wrong_type")]


def test_json_object_with_one_list_and_single_record(tmp_path):
    wrapped = write(tmp_path / "w.json", json.dumps({"data": [CHAT, CHAT2]}))
    single = write(tmp_path / "s.json", json.dumps(CHAT))
    examples, problems = load_examples([wrapped, single])
    assert problems == []
    assert [(e.source, e.line) for e in examples] == [(wrapped, 1), (wrapped, 2), (single, 1)]


def test_json_file_problems(tmp_path):
    broken = write(tmp_path / "b.json", '[\n{"text": "a"},\n{"text": }\n]')
    other = write(tmp_path / "o.json", json.dumps({"a": [1], "b": [2]}))
    scalar = write(tmp_path / "n.json", "42")
    examples, problems = load_examples([broken, other, scalar])
    # The broken element is record 2 (its place in the array); the reason gives its file line.
    assert [(e.source, e.line) for e in examples] == [(broken, 1)]
    assert problems[0].reason == "invalid JSON: Expecting value (file line 3, column 10)"
    assert [(p.file, p.line, p.kind) for p in problems] == [
        (broken, 2, "invalid_json"),
        (other, 0, "wrong_type"),
        (scalar, 0, "wrong_type"),
    ]
    assert "found an object with keys: a, b" in problems[1].reason


def test_csv_lines_are_file_lines_and_nested_columns_are_json(tmp_path):
    rows = [
        "instruction,input,output",
        "Translate,chat,cat",
        '"Write two lines","","one',
        'two"',
        "Sum,,",
    ]
    path = write(tmp_path / "t.csv", "\n".join(rows) + "\n")
    examples, problems = load_examples([path])
    assert [e.line for e in examples] == [2, 3]
    assert examples[0].messages == [
        Message("user", "Translate\n\nchat"),
        Message("assistant", "cat"),
    ]
    assert examples[1].messages[1].content == "one\ntwo"
    assert [(p.line, p.kind, p.reason) for p in problems] == [
        (5, "missing_key", "missing 'output'")
    ]


def test_csv_messages_column_holds_json(tmp_path):
    cell = json.dumps(CHAT["messages"]).replace('"', '""')
    path = write(tmp_path / "m.csv", f'messages\n"{cell}"\n"[{{""role"": ""user""]"\n')
    examples, problems = load_examples([path])
    assert [e.line for e in examples] == [2] and examples[0].messages[0] == Message("user", "Q1")
    assert [(p.line, p.kind) for p in problems] == [(3, "invalid_json")]
    assert problems[0].reason.startswith("column 'messages' is not valid JSON")


def test_csv_row_with_wrong_cell_count(tmp_path):
    path = write(tmp_path / "c.csv", "prompt,completion\nQ,A\nQ,A,extra\n")
    _, problems = load_examples([path])
    assert [(p.line, p.kind, p.reason) for p in problems] == [
        (3, "invalid_csv", "row has 3 cells but the header has 2")
    ]


def test_parquet_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = str(tmp_path / "t.parquet")
    table = pa.table(
        {"messages": [CHAT["messages"], CHAT2["messages"], [{"role": "user", "content": "Q"}]]}
    )
    pq.write_table(table, path)
    examples, problems = load_examples([path])
    assert [e.line for e in examples] == [1, 2]
    assert examples[1].messages == [Message("user", "Q2"), Message("assistant", "A2")]
    assert [(p.line, p.kind) for p in problems] == [(3, "no_assistant")]


def test_parquet_json_string_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = str(tmp_path / "s.parquet")
    pq.write_table(
        pa.table(
            {
                "conversations": [
                    json.dumps([{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}])
                ]
            }
        ),
        path,
    )
    examples, problems = load_examples([path])
    assert problems == [] and examples[0].messages == [
        Message("user", "Q"),
        Message("assistant", "A"),
    ]


def test_missing_unknown_and_empty_files(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    unknown = write(tmp_path / "t.xml", "hello")
    empty = write(tmp_path / "e.jsonl", "\n\n")
    latin = tmp_path / "l.jsonl"
    latin.write_bytes('{"text": "caf\xe9"}'.encode("latin-1"))
    _, problems = load_examples([missing, unknown, empty, str(latin)])
    assert [(p.file, p.line, p.kind) for p in problems] == [
        (missing, 0, "file_not_found"),
        (unknown, 0, "unknown_file_type"),
        (empty, 0, "empty_file"),
        (str(latin), 1, "encoding"),  # the line, not the whole file
    ]
    assert (
        problems[1].reason == "unknown file type '.xml': use one of .csv, .json, .jsonl, .md, .parquet, .txt"
    )
    assert problems[0].format() == f"{missing}: file not found"
