"""A run that fails leaves a folder that says so: run.json "failed" with the reason, no temporaries,
the last complete checkpoint kept; a full disk is a clear message, never a raw OSError.

Writers report a full disk in several forms: `OSError` with errno ENOSPC (or EDQUOT, EFBIG) from
Python's own files, a message naming "os error 28" from libraries that wrap their I/O errors
(safetensors raises its own error type), a short write from numpy; `disk_full` recognises each, along
the exception's chain.
"""

from __future__ import annotations

import errno
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tunery.errors import TuneryError

FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
FULL_WORDS = ("No space left on device", "os error 28", "Disk quota exceeded", "File too large")


def disk_full(exc: BaseException | None) -> bool:
    """True when `exc` (or an exception it was raised from) is a write that found the disk full.

    numpy's `tofile` (the GGUF writer) reports a short write as "N requested and M written", without
    an errno: on a local disk that is a full disk too."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in FULL:
            return True
        if any(word in str(exc) for word in FULL_WORDS) or SHORT_WRITE.search(str(exc)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def free_space(folder: Path) -> str:
    existing = next((p for p in [folder, *folder.resolve().parents] if p.exists()), Path("/"))
    try:
        return f"{shutil.disk_usage(existing).free / 2**20:.1f} MiB free"
    except OSError:
        return "free space unknown"


def disk_full_error(folder: Path, what: str, resume_hint: str | None, note: str = "") -> TuneryError:
    return TuneryError(
        f"the disk is full: {what} could not be written ({free_space(folder)} on the disk of {folder})"
        + (f"; {note}" if note else ""),
        why="a write failed with 'No space left on device'; its temporary files were removed and every "
            "complete file is unchanged",
        fix="free some space (or point the output at a larger disk)" + (f", then {resume_hint}" if resume_hint else ""),
    )


@contextmanager
def recorded_failure(run) -> Iterator[None]:
    """Around a training run (a `RunFolder`, or None on ranks that do not write): when it fails, remove
    temporaries, cut an incomplete metrics line, and mark run.json "failed" with the reason; a full disk
    becomes a `TuneryError` that says so. Cleaning first frees the space the failed write held."""
    try:
        yield
    except Exception as exc:
        full = disk_full(exc)
        if run is not None:
            _mark_failed(run, "disk full" if full else _reason(exc))
        if full:
            from tunery.trainers.checkpoint import latest_checkpoint

            latest = latest_checkpoint(run.checkpoints) if run is not None else None
            kept = f"the last complete checkpoint ({latest.name}) is kept" if latest else "no checkpoint was complete yet"
            raise disk_full_error(run.root if run is not None else Path.cwd(), "the run's files",
                                  "continue with --resume", note=kept) from exc
        raise


def _reason(exc: BaseException) -> str:
    text = exc.what if isinstance(exc, TuneryError) else f"{type(exc).__name__}: {exc}"
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _mark_failed(run, reason: str) -> None:
    """Clean up, then record the failure in run.json. On a disk still too full for that small file,
    the rendered-data cache (`cache/`, rebuilt on the next start) is deleted to make room first."""
    from tunery.atomic import remove_leftovers

    try:
        remove_leftovers(run.root)
        remove_leftovers(run.checkpoints)
        run.repair_metrics()
    except OSError:
        pass
    if not run.info.is_file():
        return  # failed before the run was described: nothing to mark
    for attempt in range(2):
        try:
            run.update_info(status="failed", error=reason)
            return
        except OSError as exc:
            if attempt or not disk_full(exc):
                return  # the message printed is then the only record
            shutil.rmtree(run.root / "cache", ignore_errors=True)


@contextmanager
def disk_full_is_an_error(folder: str | Path, what: str) -> Iterator[None]:
    """Around a command that writes `what` into `folder`: a full disk becomes a `TuneryError` (the
    atomic writers have already removed their temporaries; earlier outputs are unchanged)."""
    try:
        yield
    except Exception as exc:
        if disk_full(exc):
            raise disk_full_error(Path(folder), what, "run the command again") from exc
        raise
