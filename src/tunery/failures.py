"""A full disk is a clear message, never a raw OSError (what a failed training run leaves behind is
`tunery.trainers.failed_run`).

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
def disk_full_is_an_error(folder: str | Path, what: str) -> Iterator[None]:
    """Around a command that writes `what` into `folder`: a full disk becomes a `TuneryError` (the
    atomic writers have already removed their temporaries; earlier outputs are unchanged)."""
    try:
        yield
    except Exception as exc:
        if disk_full(exc):
            raise disk_full_error(Path(folder), what, "run the command again") from exc
        raise
