"""The runs under a folder, one summary each: what `tunery runs` prints and the studio lists.

A run's status comes from its run.json, read as a user means it:

- `finished`: final weights saved;
- `running`: run.json says so and the process that wrote it is alive on this machine;
- `interrupted`: stopped by a signal (SIGTERM/Ctrl-C wrote a checkpoint: `--resume` continues it), or
  marked running by a process that is gone (killed, machine restarted);
- `failed`: the run recorded an error (run.json `error`);
- `starting`: the folder exists (tunery's marker) but the run has not described itself yet.

`remove_runs` deletes only folders that carry tunery's run marker (`.tunery`, written by `train` or
`combine`) and are not training right now.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunery.errors import TuneryError
from tunery.runfolder import MARKER, RUN_MAKERS, RunFolder, made_by, resolve_portable

STATUSES = ("finished", "running", "interrupted", "failed", "starting")


@dataclass
class RunSummary:
    """One line of the run list."""

    name: str
    path: str
    status: str
    base: str | None = None
    method: str | None = None
    adapter: str | None = None
    data: list[str] = field(default_factory=list)
    step: int | None = None
    total_steps: int | None = None
    best_val_loss: float | None = None
    best_score: float | None = None
    watched: str | None = None
    final_loss: float | None = None
    eval_best: str | None = None
    elapsed_s: float | None = None
    started: float | None = None  # unix time the folder was made
    updated: float | None = None  # unix time of the newest write (run.json or metrics.jsonl)
    error: str | None = None
    pid: int | None = None

    def to_json(self) -> dict:
        return asdict(self)


def process_alive(pid: int | None, host: str | None) -> bool:
    """Whether `pid` on this machine is still a tunery process (a pid reused by another program is not)."""
    if not pid or (host and host != socket.gethostname()):
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
        state = Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust the signal check
    if state == "Z":
        return False  # exited, not yet reaped by its parent
    return not cmdline or b"tunery" in cmdline  # empty: a process in the middle of exec'ing


def run_status(info: dict) -> str:
    """The user-facing status of a run from its run.json (see the module's docstring)."""
    raw = info.get("status")
    if not info:
        return "starting"
    if raw == "finished":
        return "finished"
    if raw == "failed":
        return "failed"
    if raw == "running":
        if "pid" not in info:  # written by a tunery without pid records: believe it
            return "running"
        return "running" if process_alive(info.get("pid"), info.get("host")) else "interrupted"
    return "interrupted"  # "stopped" (a signal ended it with a checkpoint), or an unknown word


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _eval_best(root: Path) -> str | None:
    """'name: primary score' of the best system in the run's eval.json, when it was evaluated."""
    try:
        result = json.loads((root / "eval.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    primary, best = result.get("primary"), result.get("best")
    for row in result.get("systems", []):
        if row.get("system", {}).get("name") == best:
            mean = row.get("scores", {}).get(primary, {}).get("mean")
            return f"{best}: {primary} {mean:.3f}" if isinstance(mean, (int, float)) else str(best)
    return best


def _data_files(folder: RunFolder) -> list[str]:
    """The training files' names, read from config.yaml as plain YAML (a config of a newer tunery with
    keys this one does not know is still listed)."""
    import yaml

    try:
        config = yaml.safe_load(folder.config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return []
    train = (config.get("data") or {}).get("train") or []
    return [Path(str(p)).name for p in (train if isinstance(train, list) else [train])]


def last_logged_step(metrics: Path) -> int | None:
    """The step of the newest line of metrics.jsonl (read from its end: the file grows with the run)."""
    try:
        with open(metrics, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            lines = fh.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            continue  # a torn last line, or the cut first one
        if isinstance(step, int):
            return step
    return None


def _base(info: dict, root: Path) -> str | None:
    """The base model: an alias or hub id as recorded, a local folder as an absolute path (run.json
    records it relative to the run folder)."""
    base = info.get("base_model")
    return resolve_portable(str(base), root) if base else None


def summarize(root: Path) -> RunSummary:
    """The summary of one run folder."""
    folder = RunFolder(root)
    try:
        info = folder.read_info()
    except (OSError, ValueError):
        info = {"status": "failed", "error": "run.json is unreadable"}
    updated = max(filter(None, [_mtime(folder.info), _mtime(folder.metrics), _mtime(root / MARKER)]), default=None)
    return RunSummary(
        name=root.name, path=str(root), status=run_status(info), base=_base(info, root),
        method=info.get("method"), adapter=info.get("adapter"), data=_data_files(folder),
        step=info.get("step", last_logged_step(folder.metrics)), total_steps=info.get("total_steps"), best_val_loss=info.get("best_val_loss"),
        best_score=info.get("best_score"), watched=info.get("watched"), final_loss=info.get("final_loss"),
        eval_best=_eval_best(root), elapsed_s=info.get("elapsed_s"), started=_mtime(root / MARKER) or _mtime(root),
        updated=updated, error=info.get("error"), pid=info.get("pid"),
    )


def is_tunery_run(path: Path) -> bool:
    """A folder made by `tunery train` or `tunery combine` (its marker, or run.json of an older tunery)."""
    return path.is_dir() and made_by(path) in RUN_MAKERS


def list_runs(runs_dir: str | Path) -> list[RunSummary]:
    """Every run folder directly under `runs_dir`, newest first; other folders and files are left out."""
    base = Path(runs_dir).expanduser()
    if not base.is_dir():
        return []
    found = [summarize(p) for p in base.iterdir() if is_tunery_run(p)]
    return sorted(found, key=lambda r: (r.started or 0, r.name), reverse=True)


def find_run(runs_dir: str | Path, name: str) -> Path:
    """The run folder `name` under `runs_dir` (or `name` as a path), with a clear error otherwise."""
    given = Path(name).expanduser()
    candidates = [given] if ("/" in name or given.is_absolute()) else [Path(runs_dir).expanduser() / name, given]
    for path in candidates:
        if path.exists():
            if not is_tunery_run(path):
                raise TuneryError(
                    f"{path} is not a tunery run folder (no {MARKER} marker from `tunery train`)",
                    why="tunery only touches folders it made itself", fix="delete it yourself if you mean to")
            return path
    raise TuneryError(f"no run named '{name}' in {runs_dir}",
                      fix=f"see `tunery runs --runs {runs_dir}` for the names")


def remove_runs(runs_dir: str | Path, names: list[str]) -> list[Path]:
    """Delete the named run folders; returns their paths. Every name is checked before any folder is
    deleted, so one bad name deletes nothing."""
    folders = [find_run(runs_dir, name) for name in names]
    for path in folders:
        folder = RunFolder(path)
        info = folder.read_info() if folder.info.is_file() else {}
        if run_status(info) == "running":
            raise TuneryError(f"{path} is training right now (pid {info.get('pid')})",
                              fix="stop it first (Ctrl-C, SIGTERM, or Stop in the studio), then remove it")
    for path in folders:
        shutil.rmtree(path)
    return folders


def format_runs(runs: list[RunSummary], now: float | None = None) -> str:
    """The run list as a plain-text table."""
    if not runs:
        return "no runs"
    now = now or time.time()
    head = ("name", "status", "step", "method", "base", "data", "best val", "best score", "time", "updated")
    rows = [head] + [(
        r.name, r.status, _steps(r), "/".join(filter(None, [r.method, r.adapter])) or "-", _short(r.base),
        ",".join(r.data) or "-", _fig(r.best_val_loss), _fig(r.best_score), _duration(r.elapsed_s),
        _ago(r.updated, now)) for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _steps(r: RunSummary) -> str:
    if r.step is None:
        return "-"
    return f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step)


def _short(text: str | None, width: int = 28) -> str:
    if not text:
        return "-"
    return text if len(text) <= width else "..." + text[-(width - 3):]


def _fig(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


def _ago(stamp: float | None, now: float) -> str:
    if stamp is None:
        return "-"
    return f"{_duration(max(0.0, now - stamp))} ago"
