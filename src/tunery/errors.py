"""One error type that every user-facing failure goes through.

The CLI prints ``TuneryError`` as a short message (what went wrong, why, how to fix it) and shows the
traceback only with ``TUNERY_DEBUG=1``.
"""

from __future__ import annotations


class TuneryError(Exception):
    """A failure the user can act on: ``what`` happened, ``why``, and ``fix`` (what to do)."""

    def __init__(self, what: str, why: str | None = None, fix: str | None = None):
        self.what, self.why, self.fix = what, why, fix
        super().__init__(self.render())

    def render(self) -> str:
        lines = [self.what]
        if self.why:
            lines.append(f"  why: {self.why}")
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)
