"""The run folder: one self-describing directory that every later command takes as its input.

```
runs/<name>/
  .tunery          marker: this folder was made by tunery (which command), so it may be replaced
  config.yaml      the resolved config          run.json     base model, adapter kind, status, figures
  metrics.jsonl    one JSON line per log/eval    checkpoints/ step-N/ (resumable)
  adapter/ (LoRA, PEFT format) or model/ (full)  tokenizer/   with the chat template used in training
  summary.md, loss.png
```

Guards (see `check_run_target`, `check_output`): a command writes only into a folder that does not
exist yet, an empty one, or one holding its own marker; it never deletes a folder tunery did not make.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tunery import faults
from tunery.atomic import atomic_dir, remove_leftovers, write_text_atomic  # noqa: F401 (re-exported)
from tunery.errors import TuneryError

MARKER = ".tunery"
RUN_MAKERS = ("train", "combine")  # commands whose output is a run folder

from tunery.config.load import read_yaml, validate
from tunery.config.schema import TrainConfig


@dataclass(frozen=True)
class RunFolder:
    root: Path
    writable: bool = True  # False on the non-zero ranks of a multi-process run
    listeners: tuple = ()  # called with each metrics line once it is on disk (trackers: tunery.tracking)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def info(self) -> Path:
        return self.root / "run.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def summary(self) -> Path:
        return self.root / "summary.md"

    @property
    def plot(self) -> Path:
        return self.root / "loss.png"

    def read_config(self) -> TrainConfig | None:
        """The run's resolved config (config.yaml), typed and validated; None when there is none.

        The one reader of a run's config: every command that needs a setting of a run asks here."""
        if not self.config.is_file():
            return None
        return validate(read_yaml(self.config))

    def read_info(self) -> dict:
        return json.loads(self.info.read_text()) if self.info.is_file() else {}

    def update_info(self, **fields) -> dict:
        """Merge `fields` into run.json, written atomically."""
        info = self.read_info() | fields
        write_text_atomic(self.info, json.dumps(info, indent=2, sort_keys=True) + "\n")
        return info

    def append_metrics(self, record: dict) -> None:
        """Append one JSON line; non-finite numbers are written as null (JSON has no NaN).

        A crash or a full disk can leave the last line incomplete; readers drop such a line, and the
        next append cuts it off first, so it never ends up in the middle of the file."""
        if not self.writable:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        line = (json.dumps(clean) + "\n").encode()
        self.repair_metrics()
        fd = os.open(self.metrics, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fault = faults.hit("metrics-append")
            if fault:  # half a line on disk, then the crash or the full disk
                os.write(fd, line[: len(line) // 2])
                faults.act(fault, "metrics-append")
            os.write(fd, line)
        finally:
            os.close(fd)
        for listener in self.listeners:
            listener(clean)

    def repair_metrics(self) -> int:
        """Cut an incomplete last line off metrics.jsonl (in place: needs no free space). Returns the
        number of bytes cut."""
        return cut_torn_tail(self.metrics)

    def read_metrics(self) -> list[dict]:
        return self._read_metrics()[0]

    def _read_metrics(self) -> tuple[list[dict], bool]:
        """(records, whether an incomplete last line was dropped)."""
        if not self.metrics.is_file():
            return [], False
        text = self.metrics.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        torn = lines.pop() != ""  # text after the last newline: a line cut short
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if number == len(lines) and not torn:  # the last line, cut short but newline-less
                    torn = True
                    continue
                raise TuneryError(f"{self.metrics} line {number} is not JSON ({exc.msg})",
                                  why="the file was edited or damaged", fix="fix or delete that line") from exc
        return records, torn

    def truncate_metrics(self, last_step: int, log: Callable[[str], None] | None = None) -> None:
        """Drop lines after `last_step` (a resumed run rewrites them, so the file never holds both) and
        an incomplete last line left by a crash, saying so."""
        records, torn = self._read_metrics()
        if torn and log is not None:
            log(f"{self.metrics}: dropped an incomplete last line (the previous process stopped while "
                "writing it); the complete lines are kept")
        kept = [r for r in records if r.get("step", 0) <= last_step]
        write_text_atomic(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))


def keep_steps_up_to(path: Path, last_step: int) -> int:
    """Drop the JSON lines of a per-step log logged after `last_step`, and a torn last line: a resumed
    run writes those steps again, so the file never holds them twice. Returns the lines dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            record = json.loads(line) if line.endswith("\n") else None
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and record.get("step", 0) <= last_step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        write_text_atomic(path, "".join(kept))
    return dropped


def cut_torn_tail(path: Path) -> int:
    """Truncate `path` after its last newline when it does not end with one; returns bytes cut."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "rb+") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        start = max(0, size - (1 << 20))  # a metrics line is far shorter than a MiB
        fh.seek(start)
        tail = fh.read()
        keep = start + tail.rfind(b"\n") + 1 if b"\n" in tail else start
        fh.truncate(keep)
        return size - keep


def read_run_info(run_dir: Path) -> dict:
    """The run's run.json as a dict, with a clear error when it is unreadable."""
    path = RunFolder(run_dir).info
    try:
        info = RunFolder(run_dir).read_info()
    except (OSError, json.JSONDecodeError) as exc:
        raise TuneryError(f"cannot read {path}", why=str(exc)) from exc
    if not isinstance(info, dict) or "base_model" not in info:
        raise TuneryError(f"{path} does not name a base_model", why="the run folder is damaged")
    # A local base model is recorded relative to the run folder (portable_path): resolve it here.
    return info | {"base_model": resolve_portable(str(info["base_model"]), run_dir)}


def unfinished_error(run_dir: Path, info: dict, missing: Path) -> TuneryError:
    """The error for a run whose final weights (`missing`: its adapter/ or model/) are not there yet."""
    status = info.get("status", "unknown")
    return TuneryError(
        f"{run_dir} has no final weights yet ({missing.name}/ is missing; run status: {status})",
        why="training did not finish, so only resumable checkpoints exist",
        fix="resume it with `tunery train CONFIG --resume` (CONFIG: the config you trained with, "
        f"or {run_dir / 'config.yaml'})",
    )


def is_run_folder(path: str | Path) -> bool:
    return (Path(path) / "run.json").is_file()


# --- names, markers and guards -------------------------------------------------------------------

def write_marker(folder: Path, made_by: str) -> None:
    from tunery import __version__

    write_text_atomic(folder / MARKER, json.dumps({"made_by": made_by, "tunery_version": __version__}) + "\n")


def made_by(folder: str | Path) -> str | None:
    """The tunery command that made `folder` (its marker), or None. A run folder of a tunery version
    from before markers (run.json with tunery_version) counts as made by `train`."""
    folder = Path(folder)
    try:
        return str(json.loads((folder / MARKER).read_text())["made_by"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        legacy = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return "train" if isinstance(legacy, dict) and "tunery_version" in legacy else None


def _is_empty(folder: Path) -> bool:
    return not any(folder.iterdir())


def _foreign(folder: str | Path, what: str, fix: str) -> TuneryError:
    return TuneryError(
        f"{folder} already exists and holds something else: files that tunery did not write "
        f"(no {MARKER} marker)",
        why=f"{what} only writes into a new or empty folder, or replaces its own earlier output",
        fix=fix,
    )


def check_run_target(root: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse a run folder that tunery did not make (before anything is loaded, read or changed)."""
    root = Path(root)
    if not root.exists():
        return
    if not root.is_dir():
        raise TuneryError(f"the run folder {root} is not a folder but a file", fix="set output.name=NEW")
    if _is_empty(root):
        return
    maker = made_by(root)
    if maker is None:
        raise _foreign(root, "tunery train", "set output.name or output.dir to a new folder, or move that folder away")
    if maker not in RUN_MAKERS:
        raise TuneryError(f"{root} holds the output of `tunery {maker}`, not a run",
                          fix="set output.name or output.dir to a new folder")


def clear_run_folder(root: Path) -> None:
    """Delete a run folder for --overwrite: only one tunery made (checked again here) or an empty one."""
    if not root.exists():
        return
    if not _is_empty(root) and made_by(root) not in RUN_MAKERS:
        raise _foreign(root, "--overwrite", "move that folder away yourself")
    shutil.rmtree(root)


def create_run_folder(root: Path, maker: str = "train") -> None:
    """Make `root` a run folder: created with its marker in one rename, or marked when empty. An
    existing run folder is cleaned of temporaries left by an interrupted write."""
    from tunery.failures import disk_full_is_an_error

    with disk_full_is_an_error(root, "the run folder"):
        if not root.exists():
            with atomic_dir(root) as tmp:
                write_marker(tmp, maker)
            return
        if made_by(root) is None:
            write_marker(root, maker)
    remove_leftovers(root)
    remove_leftovers(root / "checkpoints")


def check_output(out: str | Path, maker: str, overwrite: bool) -> Path:
    """The absolute path of an output folder that `tunery <maker>` replaces as a whole (--out).

    Allowed: a new folder, an empty one, or (with --overwrite) an earlier output of the same command.
    Never the current folder or one above it, never a folder tunery did not make."""
    given = str(out)
    path = Path(out).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if path == cwd or path in cwd.parents:
        raise TuneryError(f"--out {given} is the current folder or a folder above it",
                          why=f"tunery {maker} replaces its output folder as a whole",
                          fix="name a new folder, e.g. --out out/NAME")
    if not path.exists():
        return path
    if not path.is_dir():
        raise TuneryError(f"--out {given} is a file, not a folder", fix="name a new folder")
    if _is_empty(path):
        return path
    found = made_by(path)
    if found is None:
        raise _foreign(given, f"tunery {maker}", "choose another --out folder, or move that one away yourself")
    if found != maker:
        raise TuneryError(f"--out {given} holds the output of `tunery {found}`, not of `tunery {maker}`",
                          fix="choose another --out folder")
    if not overwrite:
        raise TuneryError(f"{given} already holds an earlier `tunery {maker}` output",
                          fix="add --overwrite to replace it, or choose another --out folder")
    return path


# --- paths recorded in shared files ---------------------------------------------------------------

def portable_path(spec: str, relative_to: str | Path) -> str:
    """How a shared file records a model or run: an alias or hub id as it is, a local path relative to
    the folder holding the record (starting with ./ or ../, which no hub id does), never absolute."""
    path = Path(spec).expanduser()
    if not (path.is_absolute() or path.exists()):  # an alias or hub id (a hub id is never absolute)
        return spec
    rel = os.path.relpath(path.resolve(), Path(relative_to).resolve())
    return rel if rel.startswith("..") else f"./{rel}"


def resolve_portable(spec: str, relative_to: str | Path) -> str:
    """Inverse of `portable_path`: a ./ or ../ path made absolute against the folder holding it."""
    if spec.startswith(("./", "../")) or spec in (".", ".."):
        return str((Path(relative_to) / spec).resolve())
    return spec
