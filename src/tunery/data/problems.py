"""`Problem`: one thing wrong with one record (or one file), and how a list of them is shown."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

from tunery.errors import TuneryError

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """A located finding. ``kind`` is a short stable code (``invalid_json``, ``missing_role`` ...)
    that scripts and tests can match on; ``reason`` is the sentence a person reads. ``line`` 0 means
    the problem concerns the whole file."""

    file: str
    line: int
    reason: str
    severity: Severity = "error"
    kind: str = "error"

    def format(self) -> str:
        """``file:line: reason`` (``file: reason`` for problems about a whole file)."""
        where = f"{self.file}:{self.line}" if self.line > 0 else self.file
        return f"{where}: {self.reason}"

    def to_json(self) -> dict:
        """file, line, reason, severity and kind as a plain dict."""
        return asdict(self)


def errors_of(problems: Iterable[Problem]) -> list[Problem]:
    """The problems with severity ``error``, in order."""
    return [p for p in problems if p.severity == "error"]


def format_problems(problems: list[Problem], limit: int | None = 50) -> str:
    """One line per problem; beyond ``limit`` lines, a count of the rest (a broken template can
    make every record fail, and ten thousand identical lines help nobody)."""
    shown = problems if limit is None else problems[:limit]
    lines = [p.format() for p in shown]
    if len(problems) > len(shown):
        lines.append(f"... and {len(problems) - len(shown)} more")
    return "\n".join(lines)


def raise_if_errors(problems: list[Problem], what: str = "the data") -> None:
    """Raise one `TuneryError` listing every error in ``problems`` at once; do nothing if none."""
    errors = errors_of(problems)
    if not errors:
        return
    files = sorted({p.file for p in errors})
    raise TuneryError(
        f"{len(errors)} problem{'s' if len(errors) != 1 else ''} in {what} ({', '.join(files)}):\n"
        + format_problems(errors),
        fix="fix the records listed above; `tunery data check FILE` lists every problem "
        "with token statistics",
    )
