"""Names a config may give: a run name stays inside `output.dir`."""

from __future__ import annotations

import os


def check_name(name: str) -> str:
    """A run name is one plain path component: it cannot reach outside `output.dir`."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or os.path.isabs(name) or (os.altsep and os.altsep in name)):
        raise ValueError(
            f"must be one plain folder name (no '/', '\\', '.', '..' or absolute path), got {name!r}: "
            "use output.dir for the parent folder")
    return name
