"""Readers that stream: JSONL and CSV one line at a time, Parquet in row batches, with the same
records, lines and problems as reading the whole file gave."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunery.data import readers
from tunery.data.jsontext import decode_utf8, utf8_lines


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"\n", b"\xc3\xa9", b"\xff", b"\xe2\x82", b"\xef\xbb\xbf", b"\r", b'{"t": 1}']),
                max_size=30))
def test_line_by_line_decoding_equals_whole_file_decoding(pieces):
    raw = b"".join(pieces)
    text, faults = decode_utf8(raw)
    lines = list(utf8_lines(io.BytesIO(raw)))
    # The whole-file text split at "\n" (a trailing newline ends the last line rather than starting one).
    whole = text.split("\n")
    if raw.endswith(b"\n") or not raw:
        whole.pop()
    assert [line for _, line, _ in lines] == whole
    assert {number: fault for number, _, fault in lines if fault is not None} == faults


def no_whole_file_reads(monkeypatch):
    def refuse(self):
        raise AssertionError(f"{self} was read whole")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    monkeypatch.setattr(Path, "read_text", refuse)


def test_jsonl_and_csv_are_read_line_by_line(tmp_path, monkeypatch):
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_bytes(b'{"text": "one"}\n\n{"text": "tw\xff"}\n{"text": "three"}')
    table = tmp_path / "t.csv"
    table.write_bytes(b'text\n"multi\nline"\nbad \xfe\nlast')
    no_whole_file_reads(monkeypatch)
    records, problems = readers.read_records(str(jsonl))
    assert records == [(1, {"text": "one"}), (4, {"text": "three"})]
    # 16 + 1 bytes of lines 1 and 2, then '{"text": "tw' (12 bytes): the bad byte is byte 29.
    assert [p.format() for p in problems] == [
        f"{jsonl}:3: line is not UTF-8 text: invalid start byte at byte 29 of the file (column 13)"
    ]
    records, problems = readers.read_records(str(table))
    assert records == [(2, {"text": "multi\nline"}), (5, {"text": "last"})]
    # 5 + 7 + 6 bytes of lines 1 to 3, then "bad " (4 bytes): the bad byte is byte 22.
    assert [p.format() for p in problems] == [
        f"{table}:4: row is not UTF-8 text: invalid start byte at byte 22 of the file (column 5)"
    ]


def test_parquet_in_batches_gives_the_records_of_the_whole_table(tmp_path, monkeypatch):
    pyarrow = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    rows = [{"text": f"document {i}", "messages": None} for i in range(10)]
    rows[4] = {"text": None, "messages": json.dumps([{"role": "user", "content": "Q"}])}
    rows[7] = {"text": None, "messages": "[not json"}
    path = tmp_path / "t.parquet"
    parquet.write_table(pyarrow.Table.from_pylist(rows), path, row_group_size=4)
    whole_records, whole_problems = readers.read_parquet(str(path))
    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 3)  # 4 batches, across row groups
    records, problems = readers.read_parquet(str(path))
    assert records == whole_records and problems == whole_problems
    # The same as the whole table read at once (what the reader did before), nested JSON decoded.
    expected = parquet.read_table(path).to_pylist()
    expected[4]["messages"] = [{"role": "user", "content": "Q"}]
    assert records == [(i + 1, row) for i, row in enumerate(expected) if i != 7]
    assert [(p.line, p.kind) for p in problems] == [(8, "invalid_json")]


def test_a_damaged_parquet_file_is_a_problem_not_a_crash(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 not really a parquet file")
    records, problems = readers.read_parquet(str(path))
    assert records == [] and [(p.line, p.kind) for p in problems] == [(0, "invalid_parquet")]
    assert problems[0].reason.startswith("cannot read Parquet file: ")
