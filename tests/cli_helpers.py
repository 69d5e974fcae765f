"""Helpers for CLI tests: a tiny model folder, a small chat dataset, and the real command in a subprocess."""

from __future__ import annotations

import json
import os
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
