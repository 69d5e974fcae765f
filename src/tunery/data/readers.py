"""Read records (plain dicts) from JSONL, JSON, CSV and Parquet files, each with its 1-based line.

Readers never stop at the first bad record: a record that cannot be read becomes a `Problem` and
reading goes on, so that a user sees every broken line of a file in one run.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunery.data.problems import Problem

Record = tuple[int, Any]  # (line, decoded value); the value is checked by the format converters
ReadResult = tuple[list[Record], list[Problem]]

# Columns that hold nested lists; CSV can only store them as JSON text, Parquet may do either.
NESTED_COLUMNS = ("messages", "conversations")


def read_records(path: str) -> ReadResult:
    """Every record of ``path`` with its line, plus the problems met while reading."""
    file = Path(path)
    reader = READERS.get(file.suffix.lower())
    if not file.is_file():
        what = "is a folder, not a file" if file.is_dir() else "not found"
        return [], [Problem(path, 0, f"file {what}", kind="file_not_found")]
    if reader is None:
        known = ", ".join(sorted(READERS))
        return [], [
            Problem(
                path,
                0,
                f"unknown file type '{file.suffix}': use one of {known}",
                kind="unknown_file_type",
            )
        ]
    try:
        return reader(path)
    except UnicodeDecodeError as exc:
        return [], [
            Problem(
                path,
                0,
                f"file is not UTF-8 text ({exc.reason} at byte {exc.start})",
                kind="encoding",
            )
        ]


def _json_problem(path: str, line: int, exc: json.JSONDecodeError) -> Problem:
    return Problem(path, line, f"invalid JSON: {exc.msg} (column {exc.colno})", kind="invalid_json")


def read_jsonl(path: str) -> ReadResult:
    """One JSON value per line; blank lines are skipped (a trailing newline is not a record)."""
    records: list[Record] = []
    problems: list[Problem] = []
    # utf-8-sig: editors on Windows often write a byte-order mark that json.loads rejects.
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line.rstrip("\r\n"))))
            except json.JSONDecodeError as exc:
                problems.append(_json_problem(path, number, exc))
    return records, problems


def read_json(path: str) -> ReadResult:
    """A JSON array of records (line = index + 1), an object with a single list value holding them
    (``{"data": [...]}``), or a single record object."""
    text = Path(path).read_text(encoding="utf-8-sig")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return [], [_json_problem(path, exc.lineno, exc)]
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        # {"messages": [...]} is one conversation, not a list of records named "messages".
        if len(value) == 1 and len(lists) == 1 and not set(value) & set(NESTED_COLUMNS):
            value = lists[0]
        elif set(value) & RECORD_KEYS:
            return [(1, value)], []
        else:
            keys = ", ".join(sorted(value)) or "none"
            return [], [
                Problem(
                    path,
                    0,
                    f"a JSON file must hold an array of records or an object with one list of records; "
                    f"found an object with keys: {keys}",
                    kind="wrong_type",
                )
            ]
    if not isinstance(value, list):
        return [], [
            Problem(
                path,
                0,
                f"a JSON file must hold an array of records, not a {type(value).__name__}",
                kind="wrong_type",
            )
        ]
    return [(index + 1, item) for index, item in enumerate(value)], []


def _decode_nested(path: str, line: int, row: dict) -> Problem | None:
    """Parse JSON text in nested columns in place; return a problem when it is not valid JSON."""
    for column in NESTED_COLUMNS:
        cell = row.get(column)
        if isinstance(cell, str):
            try:
                row[column] = json.loads(cell)
            except json.JSONDecodeError as exc:
                return Problem(
                    path,
                    line,
                    f"column '{column}' is not valid JSON: {exc.msg} (column {exc.colno})",
                    kind="invalid_json",
                )
    return None


def read_csv(path: str) -> ReadResult:
    """A header row then one record per row; ``line`` is the file line where the row starts (a
    quoted cell may span lines). Empty cells count as absent."""
    records: list[Record] = []
    problems: list[Problem] = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return [], [Problem(path, 0, "CSV file is empty (no header row)", kind="empty_file")]
        header = [name.strip() for name in header]
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                problems.append(Problem(path, start, f"invalid CSV: {exc}", kind="invalid_csv"))
                continue
            if not cells:
                continue
            if len(cells) != len(header):
                problems.append(
                    Problem(
                        path,
                        start,
                        f"row has {len(cells)} cells but the header has {len(header)}",
                        kind="invalid_csv",
                    )
                )
                continue
            row = {name: (cell if cell != "" else None) for name, cell in zip(header, cells)}
            problem = _decode_nested(path, start, row)
            if problem:
                problems.append(problem)
            else:
                records.append((start, row))
    return records, problems


def read_parquet(path: str) -> ReadResult:
    """One record per row (line = 1-based row). Needs the ``parquet`` extra (pyarrow)."""
    from tunery._deps import require

    parquet = require("pyarrow.parquet", extra="parquet", package="pyarrow")
    try:
        rows = parquet.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        return [], [Problem(path, 0, f"cannot read Parquet file: {exc}", kind="invalid_parquet")]
    records: list[Record] = []
    problems: list[Problem] = []
    for index, row in enumerate(rows):
        problem = _decode_nested(path, index + 1, row)
        if problem:
            problems.append(problem)
        else:
            records.append((index + 1, row))
    return records, problems


READERS: dict[str, Callable[[str], ReadResult]] = {
    ".jsonl": read_jsonl,
    ".json": read_json,
    ".csv": read_csv,
    ".parquet": read_parquet,
}

# Keys that mark an object as a record of some format (see formats.py).
RECORD_KEYS = {"messages", "conversations", "instruction", "prompt", "text"}
