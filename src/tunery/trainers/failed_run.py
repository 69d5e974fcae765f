"""A run that fails leaves a folder that says so: run.json "failed" with the reason, no temporaries,
the last complete checkpoint kept; a full disk is a clear message (`tunery.failures`)."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tunery.atomic import remove_leftovers
from tunery.errors import TuneryError
from tunery.failures import disk_full, disk_full_error
from tunery.trainers.checkpoint import latest_checkpoint


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
