"""Read records (plain dicts) from JSONL, JSON, CSV and Parquet files, each with its 1-based line.

Readers never stop at the first bad record: a record that cannot be read becomes a `Problem` and
reading goes on, so that a user sees every broken line of a file in one run. Bytes that are not
UTF-8, JSON nested too deeply to parse, or a broken element of a JSON array spoil only their own
record. In JSONL only ``\\n`` ends a record: a carriage return inside a line is JSON whitespace.
"""

from __future__ import annotations

import bisect
import csv
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tunery.data.jsontext import (
    EncodingFault,
    JsonFault,
    array_elements,
    decode_utf8,
    parse_json,
    records_array_start,
    skip_whitespace,
)
from tunery.data.problems import Problem

Record = tuple[int, Any]  # (line, decoded value); the value is checked by the format converters
ReadResult = tuple[list[Record], list[Problem]]

# Columns that hold nested lists; CSV can only store them as JSON text, Parquet may do either.
NESTED_COLUMNS = ("messages", "conversations")
# csv's default cap of 128 KiB per cell would reject a long document for continued pre-training.
CSV_FIELD_LIMIT = 1 << 30


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
    return reader(path)


def _encoding_problem(path: str, line: int, fault: EncodingFault, what: str = "line") -> Problem:
    return Problem(path, line, f"{what} is not UTF-8 text: {fault.describe()}", kind="encoding")


def _json_problem(path: str, line: int, fault: JsonFault, prefix: str = "invalid JSON") -> Problem:
    return Problem(path, line, f"{prefix}: {fault.detail}", kind=fault.kind)


def read_jsonl(path: str) -> ReadResult:
    """One JSON value per line; blank lines are skipped (a trailing newline is not a record)."""
    records: list[Record] = []
    problems: list[Problem] = []
    text, faults = decode_utf8(Path(path).read_bytes())
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if number in faults:
            problems.append(_encoding_problem(path, number, faults[number]))
            continue
        value, fault = parse_json(line)
        if fault is None:
            records.append((number, value))
        else:
            problems.append(_json_problem(path, number, fault))
    return records, problems


def read_json(path: str) -> ReadResult:
    """A JSON array of records (line = index + 1), an object with a single list value holding them
    (``{"data": [...]}``), or a single record object."""
    text, faults = decode_utf8(Path(path).read_bytes())
    if not faults:
        value, fault = parse_json(text)
        if fault is None:
            return _whole_json(path, value)
    # Something is wrong inside: read element by element so that only the bad records are lost.
    return _json_piecewise(path, text, faults)


def _whole_json(path: str, value: Any) -> ReadResult:
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if _is_wrapper(value, lists):
            value = lists[0]
        elif set(value) & RECORD_KEYS:
            return [(1, value)], []
        else:
            return [], [_not_records(path, value)]
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


def _is_wrapper(value: dict, lists: list) -> bool:
    # {"messages": [...]} is one conversation, not a list of records named "messages".
    return len(value) == 1 and len(lists) == 1 and not set(value) & set(NESTED_COLUMNS)


def _not_records(path: str, value: dict) -> Problem:
    keys = ", ".join(sorted(value)) or "none"
    return Problem(
        path,
        0,
        f"a JSON file must hold an array of records or an object with one list of records; "
        f"found an object with keys: {keys}",
        kind="wrong_type",
    )


def _json_piecewise(path: str, text: str, faults: dict[int, EncodingFault]) -> ReadResult:
    """Read a JSON file that fails as a whole: each element of its records array on its own."""
    start = skip_whitespace(text, 0)
    array_start = records_array_start(text, start, exclude=NESTED_COLUMNS)
    if array_start is None:
        # One object (a single record, line 1) or no usable structure at all (the file, line 0).
        line = 1 if text.startswith("{", start) else 0
        if faults:
            return [], [_encoding_problem(path, line, next(iter(faults.values())), "record")]
        return [], [_json_problem(path, line, parse_json(text)[1])]
    bad = sorted(faults.values(), key=lambda f: f.position)
    records: list[Record] = []
    problems: list[Problem] = []
    for element in array_elements(text, array_start):
        if isinstance(element, JsonFault):
            problems.append(_json_problem(path, 0, element))
            break
        line = element.index + 1
        fault = _first_inside(bad, element.start, element.end)
        if fault is not None:
            problems.append(_encoding_problem(path, line, fault, "record"))
        elif element.fault is not None:
            problems.append(_json_problem(path, line, element.fault))
        else:
            records.append((line, element.value))
    return records, problems


def _first_inside(bad: list[EncodingFault], start: int, end: int) -> EncodingFault | None:
    """The first fault (``bad`` sorted by position) inside [start, end), found by bisection."""
    index = bisect.bisect_left(bad, start, key=lambda f: f.position)
    return bad[index] if index < len(bad) and bad[index].position < end else None


def _decode_nested(path: str, line: int, row: dict) -> Problem | None:
    """Parse JSON text in nested columns in place; return a problem when it is not valid JSON."""
    for column in NESTED_COLUMNS:
        cell = row.get(column)
        if isinstance(cell, str):
            value, fault = parse_json(cell)
            if fault is not None:
                return _json_problem(path, line, fault, f"column '{column}' is not valid JSON")
            row[column] = value
    return None


def _lines(text: str) -> Iterator[str]:
    """The lines of ``text`` with their ends, split at ``\\n`` only (csv's own line counting then
    matches what an editor shows, and a quoted ``\\r`` stays inside its cell)."""
    parts = text.split("\n")
    for part in parts[:-1]:
        yield part + "\n"
    if parts[-1]:
        yield parts[-1]


def read_csv(path: str) -> ReadResult:
    """A header row then one record per row; ``line`` is the file line where the row starts (a
    quoted cell may span lines). Empty cells count as absent."""
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    text, faults = decode_utf8(Path(path).read_bytes())
    reader = csv.reader(_lines(text))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        return [], [Problem(path, 1, f"invalid CSV header: {exc}", kind="invalid_csv")]
    if header is None:
        return [], [Problem(path, 0, "CSV file is empty (no header row)", kind="empty_file")]
    if 1 in faults:
        return [], [_encoding_problem(path, 1, faults[1], "the header row")]
    header = [name.strip() for name in header]
    records: list[Record] = []
    problems: list[Problem] = []
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(Problem(path, start, _csv_error(exc), kind="invalid_csv"))
            continue
        problem = _csv_row_problem(path, start, reader.line_num, cells, header, faults)
        if problem is not None:
            problems.append(problem)
        elif cells:
            row = {name: (cell if cell != "" else None) for name, cell in zip(header, cells)}
            problem = _decode_nested(path, start, row)
            if problem:
                problems.append(problem)
            else:
                records.append((start, row))
    return records, problems


def _csv_error(exc: csv.Error) -> str:
    if "new-line character seen in unquoted field" in str(exc):
        # csv's own advice (universal-newline mode) is about opening files; the fix is in the data.
        return "invalid CSV: a carriage return (\\r) inside an unquoted cell; put the cell in double quotes"
    return f"invalid CSV: {exc}"


def _csv_row_problem(
    path: str, start: int, end: int, cells: list[str], header: list[str], faults: dict
) -> Problem | None:
    for line in range(start, end + 1) if faults else ():
        if line in faults:
            return _encoding_problem(path, start, faults[line], "row")
    if cells and len(cells) != len(header):
        return Problem(
            path,
            start,
            f"row has {len(cells)} cells but the header has {len(header)}",
            kind="invalid_csv",
        )
    return None


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
