"""Atomic writes: every file and folder tunery writes appears whole or not at all.

One way for files and one for folders, used everywhere (run folders, checkpoints, merges, exports,
caches):

1. write under a temporary name in the same folder (`.tmp-NAME`), so a crash or a full disk leaves
   at most a temporary that the next write of the same target replaces;
2. fsync the content, so a rename can never point at data still in the page cache;
3. rename into place and fsync the parent folder, so the rename itself is on disk.

A folder that already exists is renamed aside (`.old-NAME`) before the new one is renamed in, and
deleted only afterwards: at every moment the previous complete output or the new complete one is on
disk. `recover` puts an aside folder back when a crash fell between the two renames. On any error the
temporary is removed before the error goes on.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tunery import faults

TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"


def temp_path(target: Path) -> Path:
    return target.with_name(TMP_PREFIX + target.name)


def aside_path(target: Path) -> Path:
    return target.with_name(OLD_PREFIX + target.name)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then every folder bottom-up (their entries are data too)."""
    for parent, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_file(Path(parent) / name)
        fsync_dir(Path(parent))


def remove_path(path: Path) -> None:
    """Delete a file or folder tree if it exists (a temporary of ours: callers name only those)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write `target` through (any writer that takes a path); on success it
    is fsynced and renamed over `target`, on error removed."""
    target = Path(target)
    tmp = temp_path(target)
    remove_path(tmp)
    try:
        yield tmp
        fsync_file(tmp)
        faults.reached("atomic-file")
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        remove_path(tmp)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see the module docstring)."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically, so readers never see half a file."""
    write_bytes_atomic(path, text.encode(encoding))


def recover(target: str | Path) -> bool:
    """Put `target` back from its aside copy when a crash fell between the two renames of a swap."""
    target = Path(target)
    old = aside_path(target)
    if not target.exists() and old.is_dir():
        os.replace(old, target)
        fsync_dir(target.parent)
        return True
    return False


def swap_in(tmp: Path, target: Path) -> None:
    """Rename the complete folder `tmp` to `target`; an existing `target` is renamed aside first and
    deleted last, so one complete version is always on disk."""
    old = aside_path(target)
    recover(target)
    remove_path(old)
    replacing = target.exists()
    if replacing:
        os.replace(target, old)
    try:
        if replacing:
            faults.reached("swap")  # the previous output aside, the new one not yet in
        os.replace(tmp, target)
    except BaseException:
        recover(target)  # the previous output back in place before the error goes on
        raise
    fsync_dir(target.parent)
    remove_path(old)


def begin_dir(target: Path) -> Path:
    """An empty temporary folder beside `target` to fill: the first half of `atomic_dir`, for a writer
    that fills it in one place (a background thread) and finishes it in another."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    remove_path(tmp)
    tmp.mkdir()
    return tmp


def finish_dir(tmp: Path, target: Path) -> None:
    """fsync the filled temporary folder and swap it in as `target` (see `swap_in`); on error it is
    removed. The second half of `atomic_dir`."""
    try:
        fsync_tree(tmp)
        faults.reached("atomic-dir")
        swap_in(tmp, target)
    except BaseException:
        remove_path(tmp)
        raise


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder to fill; on success it is fsynced and swapped in as `target`
    (see `swap_in`), on error removed."""
    target = Path(target)
    tmp = begin_dir(target)
    try:
        yield tmp
    except BaseException:
        remove_path(tmp)
        raise
    finish_dir(tmp, target)


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Delete temporaries of interrupted writes in `folder` (names this module made), after putting
    back any aside folder whose target is missing. Returns what was deleted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    for old in folder.glob(OLD_PREFIX + "*"):
        recover(folder / old.name[len(OLD_PREFIX):])
    gone = sorted(p for p in folder.iterdir() if p.name.startswith((TMP_PREFIX, OLD_PREFIX)))
    for path in gone:
        remove_path(path)
    return gone
