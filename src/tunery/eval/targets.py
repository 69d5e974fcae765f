"""What `tunery eval` is asked to compare: run folders and base models, split the one way every kind
of evaluation (answers, raw text, preference pairs) plans its rows: the base models first (those named
and each run's own, in the order met, without repeats), then the runs in the order given."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def split_targets(targets: list[str], read_run: Callable[[Path, dict], T] | None = None
                  ) -> tuple[list[tuple[str, T]], list[str]]:
    """([(target as given, what is read of its folder) for each run folder], base models without repeats).
    Each run's run.json is read once; `read_run(folder, info)` reads more from the folder (default: the
    run.json dict itself)."""
    from tunery.inference import read_run_info
    from tunery.runfolder import is_run_folder

    runs, bases = [], []
    for target in targets:
        path = Path(target).expanduser()
        if is_run_folder(path):
            info = read_run_info(path)
            runs.append((target, read_run(path, info) if read_run else info))
            bases.append(info["base_model"])
        else:
            bases.append(target)
    return runs, list(dict.fromkeys(bases))
