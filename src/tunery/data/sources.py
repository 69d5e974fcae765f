"""Data sources: what an entry of `data.train` / `data.validation` (or of `tunery data check`) names.

An entry is a file, or a folder holding raw text where it lives: every file under it (recursively,
in sorted path order) that matches one of the ``include`` globs and none of the ``exclude`` globs.
Globs are matched against the path relative to the folder, with ``/`` between parts: ``*`` and ``?``
stay within one part, ``**/`` stands for any number of folders (none included), and ``[...]`` is a
set of characters, as in `glob`. Hidden files and folders (a part starting with ``.``: ``.git``,
``.venv``, ``.DS_Store``) are never read. A matched ``.jsonl``, ``.json``, ``.csv`` or ``.parquet``
file is read as records; any other matched file is one raw-text document.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tunery.config import defaults
from tunery.data.problems import Problem
from tunery.data.readers import DOCUMENT_SUFFIXES, READERS

DEFAULT_INCLUDE = defaults.INCLUDE


@dataclass(frozen=True)
class Source:
    """One file to read: its path (as the user will see it in messages) and whether it is one
    raw-text document rather than a file of records."""

    path: str
    document: bool


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern:
    """The compiled regular expression of one glob over ``/``-separated relative paths."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)  # "[]...]" holds a literal "]" first, as in fnmatch
            body = pattern[i + 1:end].replace("\\", "\\\\")
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append("[" + body + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matches(relative: str, globs: tuple[str, ...] | list[str]) -> bool:
    """True when the ``/``-separated ``relative`` path matches any of ``globs``."""
    return any(glob_regex(g).match(relative) for g in globs)


def folder_files(folder: Path, include, exclude) -> list[tuple[str, Path]]:
    """(relative path, path) of every non-hidden file under ``folder`` matching ``include`` and not
    ``exclude``, sorted by relative path. Hidden folders are not even walked into (a `.git` of a
    large repository costs nothing)."""
    found = []
    for root, folders, files in os.walk(folder, followlinks=False):
        folders[:] = [name for name in folders if not name.startswith(".")]
        base = Path(root)
        for name in files:
            if name.startswith("."):
                continue
            relative = (base / name).relative_to(folder).as_posix()
            if matches(relative, include) and not matches(relative, exclude):
                found.append((relative, base / name))
    return sorted(found)


def is_document(path: str | Path) -> bool:
    """A file read as one raw-text document: ``.txt``/``.md``, or a suffix no record reader knows."""
    suffix = Path(path).suffix.lower()
    return suffix in DOCUMENT_SUFFIXES or suffix not in READERS


def expand(path: str, include=DEFAULT_INCLUDE, exclude=()) -> tuple[list[Source], list[Problem]]:
    """The files an entry names: itself when it is a file (or is missing: the reader says so), else
    the matching files of the folder. A folder with no matching file is a problem naming the globs."""
    folder = Path(path)
    if not folder.is_dir():
        return [Source(path, Path(path).suffix.lower() in DOCUMENT_SUFFIXES)], []
    files = folder_files(folder, tuple(include), tuple(exclude))
    if not files:
        globs = f"include {list(include)}" + (f", exclude {list(exclude)}" if exclude else "")
        reason = (
            f"the folder holds no file matching {globs} (hidden files and folders are skipped); "
            "set data.include / data.exclude, or name the files"
        )
        return [], [Problem(path, 0, reason, kind="no_matching_files")]
    return [Source(os.path.join(path, *relative.split("/")), is_document(file)) for relative, file in files], []
