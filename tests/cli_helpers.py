"""Helpers for CLI tests: a tiny model folder, a small chat dataset, and the real command in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def write_chat_jsonl(path: Path, n: int, offset: int = 0) -> Path:
    lines = []
    for i in range(offset, offset + n):
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": f"What is {i} plus {i + 1}?"},
            {"role": "assistant", "content": f"{2 * i + 1}."},
        ]}))
    path.write_text("\n".join(lines) + "\n")
    return path


def run_tunery(*args: str, cwd: Path, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real `tunery` command line in a subprocess, as a user would."""
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "tunery.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"tunery {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def descendants(pid: int) -> list[int]:
    """Every living process below `pid` (children, grandchildren, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """kill -9 the process this test started and everything it started, as a power cut would.

    Only that tree: torchrun starts its workers in sessions of their own, so the launcher's process
    group does not hold them; the tree is found through parent ids. Every member is stopped first
    (SIGSTOP), so none can react to another's death (torchrun restarting a worker, say), then all
    are killed."""
    stopped: list[int] = []
    for _ in range(10):  # a child started between two reads is caught by the next one
        new = [p for p in [proc.pid, *descendants(proc.pid)] if p not in stopped]
        if not new:
            break
        for pid in new:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        stopped += new
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
