"""Read records (plain dicts) from JSONL, JSON, CSV and Parquet files, each with its 1-based line.

A ``.txt`` or ``.md`` file is one raw-text document (`read_document`).

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
    utf8_lines,
)
from tunery.data.problems import Problem

Record = tuple[int, Any]  # (line, decoded value); the value is checked by the format converters
ReadResult = tuple[list[Record], list[Problem]]

# Columns that hold nested lists; CSV can only store them as JSON text, Parquet may do either.
NESTED_COLUMNS = ("messages", "conversations")
# csv's default cap of 128 KiB per cell would reject a long document for continued pre-training.
CSV_FIELD_LIMIT = 1 << 30
# Rows per Parquet batch: small enough that a batch of long documents stays a few MB, large enough
# that the per-batch cost of pyarrow is negligible.
PARQUET_BATCH_ROWS = 1024


def read_records(path: str, document: bool = False) -> ReadResult:
    """Every record of ``path`` with its line, plus the problems met while reading. With
    ``document``, the file is one raw-text document whatever its suffix (see `read_document`)."""
    file = Path(path)
    reader = read_document if document else READERS.get(file.suffix.lower())
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
    """One JSON value per line; blank lines are skipped (a trailing newline is not a record).

    Read one line at a time: the file's bytes and text are never held whole (a 200 MB file peaked
    at about four times its size when read whole; see bench/read_memory.py)."""
    records: list[Record] = []
    problems: list[Problem] = []
    with open(path, "rb") as handle:
        for number, line, fault in utf8_lines(handle):
            if not line.strip():
                continue
            if fault is not None:
                problems.append(_encoding_problem(path, number, fault))
                continue
            value, json_fault = parse_json(line)
            if json_fault is None:
                records.append((number, value))
            else:
                problems.append(_json_problem(path, number, json_fault))
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


def _csv_lines(raw_lines, faults: dict[int, EncodingFault]) -> Iterator[str]:
    """The decoded lines of a CSV file with their ends, split at ``\\n`` only (csv's own line counting
    then matches what an editor shows, and a quoted ``\\r`` stays inside its cell). Lines that are not
    UTF-8 are put in ``faults`` as they are read, before csv returns the row holding them."""
    ended = [True]  # whether the raw line just read ended with "\n" (only the last one may not)

    def tracked():
        for raw in raw_lines:
            ended[0] = raw.endswith(b"\n")
            yield raw

    for number, text, fault in utf8_lines(tracked()):
        if fault is not None:
            faults[number] = fault
        yield text + "\n" if ended[0] else text


def read_csv(path: str) -> ReadResult:
    """A header row then one record per row; ``line`` is the file line where the row starts (a
    quoted cell may span lines). Empty cells count as absent."""
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    with open(path, "rb") as handle:
        return _read_csv_rows(path, handle)


def _read_csv_rows(path: str, handle) -> ReadResult:
    faults: dict[int, EncodingFault] = {}
    reader = csv.reader(_csv_lines(handle, faults))
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
    """One record per row (line = 1-based row). Needs the ``parquet`` extra (pyarrow).

    Read in batches of rows: only one batch is ever held as Arrow columns and as Python objects at
    once, besides the records themselves (the whole table and a full copy of it as Python objects,
    before)."""
    from tunery._deps import require

    parquet = require("pyarrow.parquet", extra="parquet", package="pyarrow")
    records: list[Record] = []
    problems: list[Problem] = []
    line = 0
    try:
        # pre_buffer off: with it, pyarrow reads ahead whole column chunks and held ~55 MB more at
        # peak on a 100 MB file (measured; bench/read_memory.py), for no speed a text column needs.
        table = parquet.ParquetFile(path, pre_buffer=False)
        for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                line += 1
                problem = _decode_nested(path, line, row)
                if problem:
                    problems.append(problem)
                else:
                    records.append((line, row))
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        where = f" after row {line}" if line else ""
        problems.append(Problem(path, 0, f"cannot read Parquet file{where}: {exc}", kind="invalid_parquet"))
    return records, problems


def read_document(path: str) -> ReadResult:
    """A whole text file as one raw-text record, ``{"text": ...}`` at line 1 (continued pre-training
    on documents where they live). An empty or blank file, and one that is not UTF-8 (the first bad
    byte's line and offset), is a problem of the file."""
    text, faults = decode_utf8(Path(path).read_bytes())
    if faults:
        first = faults[min(faults)]
        more = f"; {len(faults) - 1} more line(s) hold bytes that are not UTF-8" if len(faults) > 1 else ""
        reason = f"the file is not UTF-8 text: {first.describe()}{more}"
        return [], [Problem(path, first.line, reason, kind="encoding")]
    if not text.strip():
        what = "empty" if not text else "blank (only whitespace)"
        return [], [Problem(path, 0, f"the file is {what}: a document needs text", kind="empty_file")]
    return [(1, {"text": text})], []


# Files that are one raw-text document each, given alone or found in a folder.
DOCUMENT_SUFFIXES = (".txt", ".md")

READERS: dict[str, Callable[[str], ReadResult]] = {
    ".jsonl": read_jsonl,
    ".json": read_json,
    ".csv": read_csv,
    ".parquet": read_parquet,
    ".txt": read_document,
    ".md": read_document,
}

# Keys that mark an object as a record of some format (see formats.py).
RECORD_KEYS = {"messages", "conversations", "instruction", "prompt", "text"}
