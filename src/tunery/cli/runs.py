"""`tunery runs` and `tunery runs rm`: the run list of the studio, in the terminal."""

from __future__ import annotations

import json
from pathlib import Path


def run_list(runs_dir: Path, as_json: bool) -> int:
    from tunery.runlist import format_runs, list_runs

    runs = list_runs(runs_dir)
    if as_json:
        print(json.dumps([r.to_json() for r in runs], indent=2))
    else:
        print(format_runs(runs) if runs else f"no runs in {runs_dir}")
    return 0


def run_remove(runs_dir: Path, names: list[str], as_json: bool) -> int:
    from tunery.runlist import remove_runs

    removed = remove_runs(runs_dir, names)
    if as_json:
        print(json.dumps({"removed": [str(p) for p in removed]}))
    else:
        for path in removed:
            print(f"removed {path}")
    return 0
