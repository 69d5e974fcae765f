"""What `tunery` prints when a command fails, and the exit code it returns.

| code | meaning |
|---|---|
| 0 | success |
| 1 | problems found: data errors, a failed export verification, a plan that does not fit |
| 2 | usage or configuration error: a bad option or argument, or any `TuneryError` |
| 3 | internal error: a bug in tunery or a library; one line on stderr, the traceback in a file |
| 130 / 143 | interrupted by Ctrl-C (SIGINT) / SIGTERM |

An internal error is reported as one line that names the command, the exception and where it was
raised, and the path of a file holding the full traceback (written atomically under the cache's
``logs/`` folder, or the system temp folder when the cache is not writable). ``TUNERY_DEBUG=1`` prints
the raw traceback instead of the line.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
GROUPS = ("data",)  # sub-command groups: their command is the next word


def debug() -> bool:
    return os.environ.get("TUNERY_DEBUG") == "1"


def command_name(argv: list[str]) -> str:
    """``tunery data check`` for ``["tunery", "data", "check", "f.jsonl"]``."""
    words = [word for word in argv[1:3] if not word.startswith("-")]
    words = words[:2] if words and words[0] in GROUPS else words[:1]
    return " ".join(["tunery", *words])


def _short(filename: str) -> str:
    """A path from the package root: ``tunery/data/lint.py``, ``transformers/...``."""
    for folder in ("site-packages", "src"):
        marker = f"{os.sep}{folder}{os.sep}"
        if marker in filename:
            return filename.rsplit(marker, 1)[1]
    return filename


def _raised_at(exc: BaseException) -> str:
    """``file:line in function`` of the innermost frame, and of the innermost frame of tunery's own
    code when the exception came from elsewhere (a library, a plugin)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown place"
    ours = [f for f in frames if f"{os.sep}tunery{os.sep}" in f.filename]
    last = frames[-1]
    where = f"{_short(last.filename)}:{last.lineno} in {last.name}"
    if ours and ours[-1] is not last:
        where += f", from {_short(ours[-1].filename)}:{ours[-1].lineno} in {ours[-1].name}"
    return where


def _log_folders() -> list[Path]:
    from tunery.models.embedded import cache_root

    return [cache_root() / "logs", Path(tempfile.gettempdir()) / "tunery-logs"]


def write_traceback(exc: BaseException, argv: list[str]) -> Path | None:
    """Write the command line and the traceback of ``exc`` to a new file; its path, or None when no
    folder could take it. Written to a temporary name, fsynced, then renamed: never half a file."""
    text = (
        f"command: {' '.join(['tunery', *argv[1:]])}\n"
        f"time: {time.strftime('%Y-%m-%d %H:%M:%S')}\npython: {sys.version.split()[0]}\n\n"
        + "".join(traceback.format_exception(exc))
    )
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    for folder in _log_folders():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, folder / name)
            return folder / name
        except OSError:
            continue  # e.g. a read-only cache: try the next folder
    return None


def report_internal_error(exc: BaseException, argv: list[str]) -> int:
    """Print the one-line report of an unexpected exception (or its traceback under TUNERY_DEBUG);
    returns `EXIT_INTERNAL`."""
    if debug():
        traceback.print_exception(exc, file=sys.stderr)
        return EXIT_INTERNAL
    path = write_traceback(exc, argv)
    where = f"the full traceback is in {path}" if path else "no log folder was writable; set TUNERY_DEBUG=1 to see it"
    message = str(exc).splitlines()[0] if str(exc) else ""
    print(
        f"internal error in `{command_name(argv)}`: {type(exc).__name__}: {message} "
        f"(at {_raised_at(exc)}); {where}",
        file=sys.stderr,
    )
    return EXIT_INTERNAL
