"""Exit codes of the real `tunery` command (subprocesses): 0 ok, 1 problems found, 2 usage or config
error, 3 internal error (one line on stderr, the traceback in a file), 130 on Ctrl-C."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tunery.cli.data

from data_helpers import chat, write

# Runs `tunery data check FILE` in-process with one library function replaced by a fault, as a bug
# deep inside a command would raise it.
INJECT = """
import sys
import tunery.data.lint as lint
def broken(*args, **kwargs):
    raise {error}
lint.check_files = broken
from tunery.cli.main import main
sys.argv = ["tunery", "data", "check", sys.argv[1]]
main()
"""


# The line of tunery/cli/data.py that calls the broken function.
CALL_LINE = next(
    number
    for number, line in enumerate(Path(tunery.cli.data.__file__).read_text().splitlines(), start=1)
    if "= check_files(" in line
)


def run(args: list[str], cwd: Path, env: dict | None = None, inject: str | None = None):
    command = [sys.executable, "-c", INJECT.format(error=inject)] if inject else [sys.executable, "-m", "tunery.cli.main"]
    environment = os.environ | (env or {})
    return subprocess.run(command + args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=120)


@pytest.fixture()
def good_file(tmp_path):
    return write(tmp_path / "good.jsonl", [chat("Capital of France?", "Paris.")])


def test_ok_and_problems_found(tmp_path, good_file):
    assert run(["data", "check", good_file], tmp_path).returncode == 0
    bad = write(tmp_path / "bad.jsonl", ["{nope"])
    result = run(["data", "check", bad, "--json"], tmp_path)
    assert result.returncode == 1 and json.loads(result.stdout)["ok"] is False


def test_usage_and_config_errors_exit_two(tmp_path, good_file):
    missing_argument = run(["data", "check"], tmp_path)
    assert missing_argument.returncode == 2 and "Missing argument" in missing_argument.stderr
    assert run(["frobnicate"], tmp_path).returncode == 2
    no_model = run(["data", "check", good_file, "--model", "./no/such/model"], tmp_path)
    assert no_model.returncode == 2
    assert no_model.stderr.startswith("error: model not found: './no/such/model'")
    bad_option = run(["data", "check", good_file, "--train-on", "answers"], tmp_path)
    assert bad_option.returncode == 2 and bad_option.stderr.startswith("error: unknown train_on 'answers'")


def test_internal_error_is_one_line_and_a_traceback_file(tmp_path, good_file):
    result = run([good_file], tmp_path, env={"TUNERY_CACHE": str(tmp_path / "cache")},
                 inject="RuntimeError('boom')")
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    logs = sorted((tmp_path / "cache" / "logs").iterdir())
    assert len(logs) == 1 and logs[0].name.startswith("crash-") and logs[0].suffix == ".txt"
    assert lines[0] == (
        "internal error in `tunery data check`: RuntimeError: boom "
        f"(at <string>:5 in broken, from tunery/cli/data.py:{CALL_LINE} in run_check); "
        f"the full traceback is in {logs[0]}"
    )
    saved = logs[0].read_text()
    assert "Traceback (most recent call last)" in saved and "RuntimeError: boom" in saved
    assert f"command: tunery data check {good_file}" in saved
    assert not [p for p in logs[0].parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_debug_shows_the_raw_traceback(tmp_path, good_file):
    result = run([good_file], tmp_path, env={"TUNERY_DEBUG": "1", "TUNERY_CACHE": str(tmp_path / "c")},
                 inject="KeyError('missing')")
    assert result.returncode == 3
    assert "Traceback (most recent call last)" in result.stderr and "KeyError: 'missing'" in result.stderr


def test_ctrl_c_exits_130(tmp_path, good_file):
    result = run([good_file], tmp_path, inject="KeyboardInterrupt()")
    assert result.returncode == 130 and "Traceback" not in result.stderr


def test_help_is_lazy_and_exits_zero(tmp_path):
    code = (
        "import sys; from tunery.cli.main import app; "
        "print(sorted(m for m in ('torch', 'transformers', 'tunery.data', 'tunery.models') if m in sys.modules))"
    )
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert imported.stdout.strip() == "[]", imported.stderr
    assert run(["--help"], tmp_path).returncode == 0


def test_sigterm_after_the_run_while_the_process_winds_down_exits_143():
    """After `tunery train`'s work is done the process still takes a moment to exit; a SIGTERM then ends
    it with 143 like one during the run, not by the signal (-15), which supervisors read as a crash."""
    program = ("import os, signal, time\n"
               "from tunery.trainers.run import interruptible\n"
               "with interruptible():\n"
               "    pass\n"
               "os.kill(os.getpid(), signal.SIGTERM)\n"
               "time.sleep(5)\n")
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr


def test_a_signal_once_the_work_is_done_is_ignored_and_the_process_ends_with_its_own_code():
    """`tunery train` ignores SIGTERM once its files are complete: Python's shutdown would otherwise put the
    default handler back and a late signal would kill the exit half-way (-15)."""
    program = ("import os, signal, sys\n"
               "from tunery.trainers.run import hold_exit_signals\n"
               "hold_exit_signals()\n"
               "os.kill(os.getpid(), signal.SIGTERM)\n"
               "sys.exit(0)\n")
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
