"""Run untrusted Python (a model's completion and its tests) in a throwaway process and folder.

Each program runs in a fresh ``python -I -S`` (isolated mode, standard library only) started in a new
session, with a throwaway folder as working directory, HOME and TMPDIR, an empty environment and stdin
from /dev/null. The child closes its exits before it reads the program (see `sandbox_runner`: network
namespace, Landlock, dropping root, resource limits, an audit hook). This side enforces the wall-clock
limit and the output limit, and afterwards kills the whole process group and deletes the folder.

The limits are set by the child itself rather than in a ``preexec_fn``: `run_many` starts programs
from several threads, and ``preexec_fn`` is not safe with threads (the child of a fork may deadlock).
The child sets them before it reads the program, so the program never runs without them.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from tunery.errors import TuneryError

RUNNER = Path(__file__).with_name("sandbox_runner.py")
NOBODY = 65534
LAYERS = ("netns", "landlock", "drop_root", "seccomp", "rlimits", "audit")


@dataclass(frozen=True)
class Limits:
    """What one program may use. The CPU limit follows the wall-clock one (rounded up)."""

    seconds: float = 10.0  # wall clock, from start to finish, Python's start-up included
    memory_mb: int = 512  # address space (RLIMIT_AS)
    output_bytes: int = 1 << 20  # stdout + stderr together; more kills the program
    file_mb: int = 16  # largest file it may write (RLIMIT_FSIZE)
    open_files: int = 64  # RLIMIT_NOFILE
    layers: tuple[str, ...] = LAYERS  # tests switch layers off one at a time to see each one hold

    def runner_args(self, root: str, probe: bool = False) -> list[str]:
        """The runner's arguments: the folder, then one ``key=value`` line per setting."""
        settings = {"probe": int(probe), "nobody": int(becomes_nobody(self)),
                    "cpu_seconds": max(1, int(self.seconds + 0.999)), "memory_bytes": self.memory_mb << 20,
                    "file_bytes": self.file_mb << 20, "open_files": self.open_files,
                    "layers": ",".join(name for name in LAYERS if name in self.layers)}
        return [root, "\n".join(f"{key}={value}" for key, value in settings.items())]


def readable_by_others(path: str) -> bool:
    """Whether `path` and every folder above it let any user in (so that nobody can still import)."""
    import stat

    while True:
        mode = os.stat(path).st_mode
        need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
        if mode & need != need:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def becomes_nobody(limits: "Limits") -> bool:
    """Started as root on Linux, the child becomes nobody when it can still read the standard library."""
    return ("drop_root" in limits.layers and os.geteuid() == 0 and sys.platform.startswith("linux")
            and _stdlib_open_to_all())


@lru_cache(maxsize=1)
def _stdlib_open_to_all() -> bool:
    return readable_by_others(os.path.dirname(os.__file__))


@dataclass
class Outcome:
    """How one program ended: `passed` only when it exited 0 within every limit."""

    status: str  # passed | failed | timeout | output_limit | killed
    exit_code: int | None
    output: str  # stdout + stderr, up to the output limit
    seconds: float
    detail: str = ""  # why, in words ("killed by SIGXCPU (CPU time limit)")

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class _Collected:
    data: bytearray = field(default_factory=bytearray)
    reason: str | None = None  # timeout | output_limit


def _read_bounded(proc: subprocess.Popen, deadline: float, limit: int) -> _Collected:
    """Read the merged output until end of file, the deadline, or `limit` bytes (then stop reading:
    the program is killed, so megabytes of output never reach memory)."""
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    got = _Collected()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            got.reason = "timeout"
            return got
        if not poller.poll(left * 1000):
            continue
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            return got
        got.data += chunk[: limit + 1 - len(got.data)]
        if len(got.data) > limit:
            del got.data[limit:]
            got.reason = "output_limit"
            return got


def _wait_unreaped(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait until the program exits (True) or the deadline passes (False) without reaping it: while its
    zombie is there, its process-group id cannot be taken by another process, so killing the group
    afterwards can only hit what the program left behind."""
    if hasattr(os, "pidfd_open"):  # Linux 5.3+: the descriptor becomes readable when the process exits
        fd = os.pidfd_open(proc.pid)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(max(0.0, deadline - time.monotonic()) * 1000))
        finally:
            os.close(fd)
    if not hasattr(os, "waitid"):  # without either, reap it (the group is killed right after)
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            return False
    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the program's whole process group (anything it started too), then reap the program."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is already gone: nothing is left to kill
    proc.wait()


def _describe(status: str, code: int | None, limits: Limits) -> str:
    if status == "timeout":
        return f"stopped after {limits.seconds:g} s (wall-clock limit)"
    if status == "output_limit":
        return f"stopped: more than {limits.output_bytes} bytes of output"
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        why = {"SIGXCPU": "CPU time limit", "SIGXFSZ": "file size limit", "SIGKILL": "killed"}.get(name, "")
        return f"killed by {name}" + (f" ({why})" if why else "")
    return f"exit code {code}"


def remove_tree(path: Path) -> None:
    """Delete the throwaway folder even where the program took away permissions inside it."""
    def allow_and_retry(function, failed_path, _exc):
        os.chmod(os.path.dirname(failed_path), 0o700)
        if os.path.isdir(failed_path) and not os.path.islink(failed_path):
            os.chmod(failed_path, 0o700)
        function(failed_path)

    if sys.version_info >= (3, 12):  # onerror is deprecated there
        shutil.rmtree(path, onexc=allow_and_retry)
    else:
        shutil.rmtree(path, onerror=allow_and_retry)


@lru_cache(maxsize=1)
def _runner_source() -> str:
    return RUNNER.read_text(encoding="utf-8")


def _make_folder(program: str, limits: Limits) -> Path:
    root = Path(tempfile.mkdtemp(prefix="tunery-sandbox-")).resolve()
    (root / "main.py").write_text(program, encoding="utf-8")
    if becomes_nobody(limits):  # its folder must be its own
        for path in (root, root / "main.py"):
            os.chown(path, NOBODY, NOBODY)
    return root


def run_python(program: str, limits: Limits = Limits(), probe: bool = False) -> Outcome:
    """Run `program` (Python source) in the sandbox; its outcome. Nothing of it outlives the call."""
    if os.name != "posix":
        raise TuneryError("the code sandbox needs Linux or macOS", why=f"this system is {os.name}")
    root = _make_folder(program, limits)
    env = {"HOME": str(root), "TMPDIR": str(root), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    command = [sys.executable, "-I", "-S", "-c", _runner_source(), *limits.runner_args(str(root), probe)]
    started = time.monotonic()
    try:
        proc = subprocess.Popen(command, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            got = _read_bounded(proc, started + limits.seconds, limits.output_bytes)
            if got.reason is None and not _wait_unreaped(proc, started + limits.seconds):
                got.reason = "timeout"
        finally:
            _kill_group(proc)
            proc.stdout.close()
    finally:
        remove_tree(root)
    code = proc.returncode
    status = got.reason or ("passed" if code == 0 else "killed" if code < 0 else "failed")
    return Outcome(status, code, got.data.decode("utf-8", "replace"), round(time.monotonic() - started, 4),
                   _describe(status, code, limits))


def run_many(programs: list[str], limits: Limits = Limits(), workers: int | None = None) -> list[Outcome]:
    """`run_python` for each program, up to `workers` at a time (default: the CPU count), in order."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(programs) or 1))
    if workers == 1:
        return [run_python(p, limits) for p in programs]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: run_python(p, limits), programs))


_PROBED: dict[Limits, dict] = {}


def probe(limits: Limits = Limits()) -> dict:
    """Which layers take effect on this machine ({layer: 'on' or why it is off}), checked once per
    process: a trivial program must pass, or the sandbox cannot run Python here and that is an error
    (better than every completion scoring 0)."""
    if limits in _PROBED:
        return _PROBED[limits]
    check = "import json, re, collections, math\nassert sum(range(4)) == 6\n"
    outcome = run_python(check, limits, probe=True)
    first_line = outcome.output.split("\n", 1)[0]
    if not outcome.passed or not first_line.startswith("netns="):
        raise TuneryError("the code sandbox cannot run Python on this machine",
                          why=f"{outcome.detail}: {outcome.output[-2000:]}",
                          fix="the output above names the step that failed; please report it with this message")
    _PROBED[limits] = dict(pair.split("=", 1) for pair in first_line.split("\t"))
    return _PROBED[limits]


def describe_layers(layers: dict) -> str:
    """'netns on, landlock on (ABI 7), ...' for a log line."""
    return ", ".join(f"{name} {state}" for name, state in layers.items())


