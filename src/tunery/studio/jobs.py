"""Training runs the studio starts, stops and resumes: each is an ordinary `tunery train` subprocess.

A form's values become dotted overrides (`training.lr=1e-4`), checked by the same code as `tunery
train`'s command line, so the studio shows the same errors and "did you mean" hints. The resolved
config is written to `<runs>/.studio/<name>.yaml` and the process's output to `<runs>/.studio/<name>.log`.
Stop sends SIGTERM: the trainer finishes its step, writes a checkpoint and exits 143; resume starts
`tunery train <run>/config.yaml --resume`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tunery.errors import TuneryError
from tunery.runfolder import write_text_atomic
from tunery.runlist import find_run, process_alive

STATE_DIR = ".studio"


@dataclass
class Job:
    name: str
    command: list[str]
    log: Path
    process: subprocess.Popen
    started: float

    def returncode(self) -> int | None:
        return self.process.poll()

    def to_json(self) -> dict:
        return {"name": self.name, "pid": self.process.pid, "command": self.command, "log": str(self.log),
                "started": self.started, "returncode": self.returncode(), "alive": self.returncode() is None}


def form_overrides(values: dict) -> list[str]:
    """{"training.lr": "1e-4", "lora.rank": 8} -> ["training.lr=1e-4", "lora.rank=8"]; empty values are
    left out (the schema's default applies)."""
    overrides = []
    for key, value in values.items():
        if value is None or (isinstance(value, str) and value.strip() == ""):
            continue
        overrides.append(f"{key.strip()}={value if isinstance(value, str) else _yaml_scalar(value)}")
    return overrides


def _yaml_scalar(value) -> str:
    import json

    return json.dumps(value)  # JSON is YAML: lists, numbers and booleans read back as they were


def check_config(values: dict, extra: list[str], runs_dir: Path):
    """The validated config of a form (same checks as `tunery train`), its output folder set to `runs_dir`."""
    from tunery.config.load import load_config

    overrides = form_overrides(values) + [line.strip() for line in extra if line.strip()]
    if any(o.split("=", 1)[0].strip() == "output.dir" for o in overrides):
        raise TuneryError("output.dir cannot be set here: the studio starts its runs in its own runs folder "
                          f"({runs_dir})", fix="leave output.dir out, or start the studio with --runs DIR")
    overrides.append(f"output.dir={runs_dir.resolve()}")
    resolved = load_config(None, overrides)
    if not resolved.config.output.name:
        raise TuneryError("the run needs a name", fix="fill in output.name")
    return resolved.config


class Jobs:
    """The studio's training subprocesses, by run name."""

    def __init__(self, runs_dir: Path, python: str = sys.executable):
        self.runs_dir, self.python = Path(runs_dir), python
        self.state = self.runs_dir / STATE_DIR
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, values: dict, extra: list[str] = ()) -> Job:
        """Validate a form and start `tunery train` on it; errors are TuneryErrors with the CLI's text."""
        from tunery.config.load import to_yaml

        config = check_config(values, list(extra), self.runs_dir)
        name = config.output.name
        if (self.runs_dir / name).exists():
            raise TuneryError(f"a run named '{name}' already exists in {self.runs_dir}",
                              fix="choose another output.name, or resume that run from its page")
        self.state.mkdir(parents=True, exist_ok=True)
        config_path = self.state / f"{name}.yaml"
        write_text_atomic(config_path, to_yaml(config))
        return self._launch(name, ["train", str(config_path)])

    def resume(self, name: str) -> Job:
        """Continue an interrupted run from its newest checkpoint, with the config it started with."""
        root = find_run(self.runs_dir, name)
        if self.running(root.name):
            raise TuneryError(f"{root.name} is training already")
        command = ["train", str(root / "config.yaml"), f"output.dir={root.parent.resolve()}",
                   f"output.name={root.name}", "--resume"]
        return self._launch(root.name, command)

    def stop(self, name: str) -> int:
        """SIGTERM the run's process (the studio's, or the pid its run.json names): it checkpoints and
        exits. Returns the pid signalled."""
        job = self._jobs.get(name)
        if job is not None and job.returncode() is None:
            job.process.send_signal(signal.SIGTERM)
            return job.process.pid
        from tunery.runfolder import RunFolder

        info = RunFolder(find_run(self.runs_dir, name)).read_info()
        if not process_alive(info.get("pid"), info.get("host")):
            raise TuneryError(f"{name} is not training", fix="nothing to stop")
        os.kill(int(info["pid"]), signal.SIGTERM)
        return int(info["pid"])

    def running(self, name: str) -> bool:
        job = self._jobs.get(name)
        return job is not None and job.returncode() is None

    def get(self, name: str) -> Job | None:
        return self._jobs.get(name)

    def listed(self) -> list[dict]:
        return [job.to_json() for job in self._jobs.values()]

    def log_tail(self, name: str, chars: int = 4000) -> str:
        path = self.state / f"{name}.log"
        try:
            with open(path, "rb") as fh:
                fh.seek(max(0, path.stat().st_size - chars))
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _launch(self, name: str, args: list[str]) -> Job:
        with self._lock:
            if self.running(name):
                raise TuneryError(f"{name} is training already")
            self.state.mkdir(parents=True, exist_ok=True)
            log = self.state / f"{name}.log"
            command = [self.python, "-m", "tunery.cli.main", *args]
            env = os.environ | {"PYTHONUNBUFFERED": "1"}
            with open(log, "ab") as out:
                out.write(f"$ tunery {' '.join(args)}\n".encode())
                out.flush()
                process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                           stdin=subprocess.DEVNULL)
            job = Job(name, command, log, process, time.time())
            self._jobs[name] = job
            return job

    def shutdown(self, timeout: float = 30.0) -> None:
        """SIGTERM every running job and wait for its checkpoint (the studio is closing)."""
        for job in self._jobs.values():
            if job.returncode() is None:
                job.process.send_signal(signal.SIGTERM)
        for job in self._jobs.values():
            try:
                job.process.wait(timeout)
            except subprocess.TimeoutExpired:
                job.process.kill()
