"""Bodies of `tunery merge`, `tunery export` and `tunery combine`.

Progress messages go to stderr so that `--json` writes nothing but JSON on stdout.
"""

from __future__ import annotations

import json
import sys


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _emit(record: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(record, indent=2, sort_keys=True, default=str))


def run_merge(run_dir: str, out: str, dtype: str, overwrite: bool, as_json: bool) -> int:
    """Merge a run's adapter into its base; exit code 0 on success."""
    from tunery.export.merge import merge_run
    from tunery.failures import disk_full_is_an_error

    with disk_full_is_an_error(out, "the merged model"):
        record = merge_run(run_dir, out, dtype=dtype, overwrite=overwrite, log=_log)
    _emit(record, as_json)
    return 0


def run_export(run_dir: str, fmt: str, out: str, gguf_type: str, overwrite: bool, as_json: bool,
               verify: dict | None = None) -> int:
    """Export and verify; exit code 0 when the verification passed, 1 when it failed."""
    from tunery.export.exporter import export_run
    from tunery.failures import disk_full_is_an_error

    with disk_full_is_an_error(out, "the export"):
        record = export_run(run_dir, fmt, out, gguf_type=gguf_type, overwrite=overwrite, log=_log, **(verify or {}))
    _emit(record, as_json)
    return 0 if record["passed"] else 1


def run_combine(runs: list[str], method: str, weights: str | None, density: float | None, seed: int,
                out: str, overwrite: bool, as_json: bool) -> int:
    """Combine adapters into a new run folder; exit code 0 on success."""
    from tunery.errors import TuneryError
    from tunery.export.combine import combine_runs

    try:
        values = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise TuneryError(f"--weights must be numbers separated by commas, got '{weights}'") from None
    from tunery.failures import disk_full_is_an_error

    with disk_full_is_an_error(out, "the combined run"):
        info = combine_runs(runs, method, out, weights=values, density=density, seed=seed, overwrite=overwrite,
                            log=_log)
    _emit(info, as_json)
    return 0
