"""Bytes to text and text to JSON values without letting one bad record stop (or crash) a file.

Three things the standard library does not do for us:

- `decode_utf8` decodes a whole file even when some lines are not UTF-8, and says which lines, at
  which byte of the file, so that the other lines are still read (a strict decode fails the file).
  `utf8_lines` does the same one line at a time, for readers that need not hold the whole file.
- `parse_json` turns every way `json.loads` can fail into a `JsonFault`: syntax errors, nesting
  deeper than the C parser's recursion limit (a ~2 KB line of brackets raises `RecursionError`), and
  integers longer than Python's 4,300-digit conversion limit (`ValueError`).
- `array_elements` reads a JSON array element by element, so one broken element is one problem
  and the elements after it are still read.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")
# The characters that matter when skipping over a value: quotes, brackets and separators.
_STRUCTURE = re.compile(r'["\[\]{},]')
_STRING_BODY = re.compile(r'(?:[^"\\]|\\.)*"', re.S)


@dataclass(frozen=True)
class EncodingFault:
    """The first byte of a line that is not UTF-8."""

    line: int  # 1-based line of the file ("\n" ends a line)
    column: int  # 1-based character column within the line
    byte: int  # 0-based offset of the bad byte in the file
    position: int  # offset of the bad character in the decoded text (one per bad byte)
    reason: str  # the codec's reason, e.g. "invalid start byte"

    def describe(self) -> str:
        return f"{self.reason} at byte {self.byte} of the file (column {self.column})"


@dataclass(frozen=True)
class JsonFault:
    """Why a piece of text is not a JSON value we can use; ``kind`` is a `Problem` kind."""

    kind: str  # invalid_json | nested_too_deep
    detail: str  # the sentence after "invalid JSON: "


def decode_utf8(raw: bytes) -> tuple[str, dict[int, EncodingFault]]:
    """The text of ``raw`` (a leading byte-order mark dropped) and the lines that are not UTF-8.

    Bad bytes are kept as lone surrogates (``surrogateescape``), one character per byte, so lines and
    positions in the text still match the file; callers skip the lines named in the faults.
    """
    try:
        return raw.decode("utf-8").removeprefix("\ufeff"), {}
    except UnicodeDecodeError:
        pass
    faults: dict[int, EncodingFault] = {}
    byte_offset = char_offset = 0
    for number, line in enumerate(raw.split(b"\n"), start=1):
        decoded = line.decode("utf-8", errors="surrogateescape")
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            # A newline byte never continues a multi-byte character, so each line decodes alone
            # and the prefix before the first bad byte is valid text.
            column = len(line[: exc.start].decode("utf-8")) + 1
            faults[number] = EncodingFault(
                number, column, byte_offset + exc.start, char_offset + column - 1, exc.reason
            )
        byte_offset += len(line) + 1
        char_offset += len(decoded) + 1
    text = raw.decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
        faults = {n: _shift(f, -1) if f.line == 1 else _shift(f, -1, column=False) for n, f in faults.items()}
    return text, faults


def utf8_lines(raw_lines: Iterable[bytes]) -> Iterator[tuple[int, str, EncodingFault | None]]:
    """``(number, text, fault)`` for each line of a file opened in binary mode (iterating it splits at
    ``\\n`` only), the ``\\n`` dropped, decoded one line at a time: a reader holds one line, not the file.

    Same text and faults as `decode_utf8` gives for the whole file (a leading byte-order mark dropped,
    bad bytes kept as lone surrogates, byte offsets counted in the file), so the readers that stream
    report exactly what the whole-file readers did.
    """
    byte_offset = char_offset = 0
    for number, raw in enumerate(raw_lines, start=1):
        body = raw[:-1] if raw.endswith(b"\n") else raw
        skip = len(codecs.BOM_UTF8) if number == 1 and body.startswith(codecs.BOM_UTF8) else 0
        body = body[skip:]
        fault = None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            text = body.decode("utf-8", errors="surrogateescape")
            column = len(body[: exc.start].decode("utf-8")) + 1
            fault = EncodingFault(
                number, column, byte_offset + skip + exc.start, char_offset + column - 1, exc.reason
            )
        yield number, text, fault
        byte_offset += len(raw)
        char_offset += len(text) + 1


def _shift(fault: EncodingFault, by: int, column: bool = True) -> EncodingFault:
    return EncodingFault(
        fault.line, fault.column + (by if column else 0), fault.byte, fault.position + by, fault.reason
    )


def parse_json(text: str) -> tuple[Any, JsonFault | None]:
    """``(value, None)``, or ``(None, fault)`` when ``text`` is not one JSON value."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}" if exc.lineno > 1 else f"column {exc.colno}"
        return None, JsonFault("invalid_json", f"{exc.msg} ({where})")
    except (RecursionError, ValueError) as exc:
        return None, _deep_or_long(text, 0, exc)


def _deep_or_long(text: str, start: int, exc: Exception) -> JsonFault:
    if isinstance(exc, RecursionError):
        depth = nesting_depth(text, start)
        return JsonFault(
            "nested_too_deep", f"nested {depth} levels deep, more than the reader can follow"
        )
    # int() refuses to convert more than 4,300 digits (CVE-2020-10735); json.loads lets it raise.
    return JsonFault("invalid_json", "a number is too long to read (over 4300 digits)")


def nesting_depth(text: str, start: int = 0) -> int:
    """The deepest bracket nesting of the value that starts at ``start`` (strings skipped)."""
    return skip_value(text, start)[1]


def skip_value(text: str, start: int) -> tuple[int, int]:
    """End offset and bracket depth of the JSON-like value at ``start``, found without parsing it.

    Used to step over an element that `json` could not read. Returns ``len(text)`` as the end when
    the brackets never balance (then nothing after it can be trusted either).
    """
    depth = deepest = 0
    position = start
    while True:
        match = _STRUCTURE.search(text, position)
        if match is None:
            return len(text), deepest
        char, position = match.group(), match.end()
        if char == '"':
            body = _STRING_BODY.match(text, position)
            if body is None:
                return len(text), deepest
            position = body.end()
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            if depth == 0:  # the end of the enclosing array: a scalar element ends before it
                return match.start(), deepest
            depth -= 1
            if depth == 0:
                return position, deepest
        elif depth == 0:  # "," after a scalar element
            return match.start(), deepest


def skip_whitespace(text: str, position: int) -> int:
    """The first offset at or after ``position`` that is not JSON whitespace."""
    return _WHITESPACE.match(text, position).end()


@dataclass
class Element:
    """One element of a JSON array: its index, where it lies in the text, its value or its fault."""

    index: int
    start: int
    end: int
    value: Any = None
    fault: JsonFault | None = None


def _read_element(text: str, position: int) -> tuple[Any, JsonFault | None, int]:
    try:
        value, end = _DECODER.raw_decode(text, position)
        return value, None, end
    except json.JSONDecodeError as exc:
        fault = JsonFault("invalid_json", f"{exc.msg} (file line {exc.lineno}, column {exc.colno})")
    except (RecursionError, ValueError) as exc:
        fault = _deep_or_long(text, position, exc)
    end, _ = skip_value(text, position)
    return None, fault, end


def array_elements(text: str, start: int) -> Iterator[Element | JsonFault]:
    """The elements of the array whose ``[`` is at ``start``; a bare `JsonFault` last when the array
    itself is broken (a missing comma or bracket), after which nothing more can be read."""
    position = skip_whitespace(text, start + 1)
    if text.startswith("]", position):
        return
    index = 0
    while True:
        value, fault, end = _read_element(text, position)
        yield Element(index, position, end, value, fault)
        position = skip_whitespace(text, end)
        following = text[position : position + 1]
        if following == ",":
            position = skip_whitespace(text, position + 1)
            index += 1
        elif following == "]":
            return
        else:
            line, column = line_and_column(text, position)
            found = f"found {following!r}" if following else "the file ends"
            yield JsonFault(
                "invalid_json",
                f"expected ',' or ']' after record {index + 1} but {found} "
                f"(file line {line}, column {column}); the records after it are not read",
            )
            return


def line_and_column(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of ``position`` in ``text``."""
    line = text.count("\n", 0, position) + 1
    return line, position - (text.rfind("\n", 0, position) + 1) + 1


def records_array_start(text: str, start: int, exclude: tuple[str, ...] = ()) -> int | None:
    """Offset of the ``[`` that opens a file's records: the file's own array, or the list of a
    ``{"key": [...]}`` wrapper whose key is not in ``exclude``; None for anything else."""
    if text.startswith("[", start):
        return start
    if not text.startswith("{", start):
        return None
    position = skip_whitespace(text, start + 1)
    try:
        key, position = _DECODER.raw_decode(text, position)
    except (ValueError, RecursionError):
        return None
    position = skip_whitespace(text, position)
    if not isinstance(key, str) or key in exclude or not text.startswith(":", position):
        return None
    position = skip_whitespace(text, position + 1)
    return position if text.startswith("[", position) else None
