"""Which guard against forgetting a run trained with, read from its config.yaml, for the label
`tunery eval` puts on its row and forgetting entry ("with guard: replay self 20%, KL to base 0.1").

The config is read as plain YAML rather than through the typed schema: a run folder written by another
tunery version may hold keys this one does not know, and a label must never stop an evaluation.
"""

from __future__ import annotations

from pathlib import Path

from tunery.config.guards import guard_label, guard_of

__all__ = ["guard_label", "guard_of", "run_guard"]


def run_guard(run: str | Path) -> dict | None:
    """The guard a run folder trained with (see `guard_of`), from its config.yaml; None without one."""
    from tunery.config.load import read_yaml
    from tunery.runfolder import RunFolder

    path = RunFolder(Path(run)).config
    if not path.is_file():
        return None
    return guard_of(read_yaml(path))
