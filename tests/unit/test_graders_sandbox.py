"""code_tests and its sandbox: right and wrong completions, and hostile ones (endless loops, floods of
output, fork bombs, writes outside the folder, sockets, signals) that must score 0 and leave nothing
behind. Each attack is also run with every layer off, to show that it really does what it says when
nothing stops it, and then with one layer at a time, to show which layers stop it alone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tunery.graders import GraderFailed, parse_grader
from tunery.graders import sandbox as sb
from tunery.graders.code_tests import extract_code, run_tests

ADD = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


@pytest.fixture
def private_tmp(monkeypatch, tmp_path_factory):
    """Sandbox folders go into a folder of this test's own, so that what is left behind can be counted
    (in the system's temp folder, which a child that becomes nobody can reach)."""
    tmp_path_factory.getbasetemp()  # pytest's own temp folders stay where they are
    root = Path(tempfile.mkdtemp(prefix="tunery-test-sandboxes-"))
    root.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    sb.remove_tree(root)


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line holds `text` (a sandbox's folder is in its arguments)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().split(") ")[-1][:1]
            except OSError:
                continue
            if text.encode() in cmdline and state != "Z":
                found.append(int(entry.name))
    return found


def assert_nothing_left(root: Path) -> None:
    assert list(root.iterdir()) == [], "the throwaway folder was not deleted"
    assert processes_mentioning(str(root)) == [], "a process of the sandbox is still alive"


def test_extract_code_takes_the_first_python_block_else_a_bare_block_else_everything():
    assert extract_code("Here:\n```python\nx = 1\n```\nand\n```python\ny = 2\n```") == "x = 1\n"
    assert extract_code("```text\nnope\n```\n```\nz = 3\n```") == "z = 3\n"
    assert extract_code("```py\nw = 4\n") == "w = 4\n"  # cut off by the token limit: to the end
    assert extract_code("x = 1") == "x = 1"
    assert extract_code("````python\na = '```'\n````") == "a = '```'\n"


def test_a_correct_completion_scores_1_and_a_wrong_one_0(private_tmp):
    grader = parse_grader("code_tests:5")
    record = {"tests": TESTS}
    answer = f"Sure, here it is:\n\n```python\n{ADD}```\nIt adds."
    assert grader.score(answer, None, record) == 1.0
    assert grader.score(ADD.replace("+", "-"), None, record) == 0.0
    assert grader.score("def add(a, b) return a + b", None, record) == 0.0  # a syntax error
    assert grader.score(ADD, None, {"tests": ["assert add(1, 1) == 2", "assert add(0, 0) == 0"]}) == 1.0
    with pytest.raises(GraderFailed, match="no 'tests' field"):
        grader.score(ADD, None, {"answer": "5"})
    assert_nothing_left(private_tmp)


def test_several_completions_run_in_parallel(private_tmp):
    grader = parse_grader("code_tests:5")
    nap = "import time\ntime.sleep(0.6)\n" + ADD
    started = time.monotonic()
    got = grader.score_many([nap, nap, nap.replace("+", "*"), nap], [None] * 4, [{"tests": TESTS}] * 3 + [{}])
    elapsed = time.monotonic() - started
    assert got[:3] == [1.0, 1.0, 0.0] and isinstance(got[3], GraderFailed)
    assert elapsed < 1.6, f"3 programs of 0.6 s took {elapsed:.2f} s: they did not run side by side"
    assert_nothing_left(private_tmp)


def test_the_program_runs_in_a_fresh_empty_environment(private_tmp, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("SECRET_TOKEN", "s3cret")
    check = ("import os, sys, tempfile\n"
             "folder = os.getcwd()\n"
             "assert 'SECRET_TOKEN' not in os.environ and 'HTTPS_PROXY' not in os.environ, dict(os.environ)\n"
             "assert os.environ['HOME'] == folder and tempfile.gettempdir() == folder\n"
             "assert os.listdir(folder) == ['main.py'] and sys.flags.isolated == 1\n"
             "open('scratch.txt', 'w').write('mine')  # its own folder is writable\n"
             "assert open('scratch.txt').read() == 'mine'\n")
    outcome = run_tests(check, "")
    assert outcome.passed, outcome.output
    assert_nothing_left(private_tmp)


HOSTILE = {
    "loops forever": ("while True:\n    pass\n", "timeout", "limit"),  # wall clock, or CPU time on a quiet machine
    "sleeps forever": ("import time\ntime.sleep(600)\n", "timeout", "wall-clock limit"),
    "prints megabytes": ("while True:\n    print('x' * 100_000)\n", "output_limit", "bytes of output"),
    "allocates 4 GB": ("block = bytearray(4 << 30)\n", "failed", "exit code 1"),
    "writes a huge file in its folder": ("with open('big', 'wb') as f:\n    for _ in range(100):\n"
                                         "        f.write(b'x' * (1 << 20))\n", "failed", "exit code 1"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_runaway_completions_are_stopped_and_score_0(name, private_tmp):
    program, status, detail = HOSTILE[name]
    limits = sb.Limits(seconds=2)
    started = time.monotonic()
    outcome = sb.run_python(program, limits)
    expected = {status, "killed"} if name == "loops forever" else {status}
    assert outcome.status in expected and not outcome.passed, outcome.output[-500:]
    assert detail in outcome.detail or detail in outcome.output, (outcome.detail, outcome.output[-500:])
    assert time.monotonic() - started < 4.0
    assert len(outcome.output) <= limits.output_bytes
    assert_nothing_left(private_tmp)


FORK = ("import os, time\n"
        "for _ in range(30):\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "print('forked 30')\n")


def write_outside(target: Path) -> str:
    return (f"import os, shutil\nopen('mine', 'w').write('x')\nattempts = []\n"
            f"for attempt in (lambda: open({str(target)!r}, 'w').write('pwned'),\n"
            f"                lambda: os.rename('mine', {str(target)!r}),\n"
            f"                lambda: shutil.copy('main.py', {str(target)!r}),\n"
            f"                lambda: os.close(os.open({str(target) + '.new'!r}, os.O_CREAT | os.O_WRONLY)),\n"
            f"                lambda: os.remove({str(target.parent / 'keep.txt')!r}),\n"
            f"                lambda: (os.symlink({str(target)!r}, 'link'), open('link', 'w').write('pwned'))):\n"
            f"    try:\n        attempt()\n        attempts.append('done')\n"
            f"    except OSError as exc:\n        attempts.append(type(exc).__name__)\n"
            f"print(attempts)\nassert 'done' in attempts\n")


def outside_untouched(target: Path) -> bool:
    keep = target.parent / "keep.txt"
    return not target.exists() and not Path(str(target) + ".new").exists() and keep.read_text() == "keep"


class Listener:
    """A TCP and a UDP socket on 127.0.0.1 in the test process: did anything reach them?"""

    def __init__(self):
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.tcp.settimeout(0.3)
        self.udp.settimeout(0.3)

    def program(self) -> str:
        tcp, udp = self.tcp.getsockname()[1], self.udp.getsockname()[1]
        return (f"import socket\nreached = []\n"
                f"try:\n    socket.create_connection(('127.0.0.1', {tcp}), timeout=2).sendall(b'hi')\n"
                f"    reached.append('tcp')\nexcept OSError as exc:\n    print('tcp', exc)\n"
                f"try:\n    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"    u.sendto(b'hi', ('127.0.0.1', {udp}))\n    reached.append('udp')\n"
                f"except OSError as exc:\n    print('udp', exc)\nprint(reached)\nassert reached\n")

    def reached(self) -> set[str]:
        found = set()
        try:
            self.tcp.accept()[0].close()
            found.add("tcp")
        except socket.timeout:
            pass
        try:
            self.udp.recv(16)
            found.add("udp")
        except socket.timeout:
            pass
        return found

    def close(self):
        self.tcp.close()
        self.udp.close()


@pytest.fixture
def outside(tmp_path):
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    return folder / "target.txt"


def attack(name: str, outside: Path, listener: Listener) -> tuple[str, callable]:
    """(program, harmless?) for one attack: harmless() checks that it changed nothing."""
    if name == "fork":
        return FORK, lambda outcome: "forked 30" not in outcome.output
    if name == "write":
        return write_outside(outside), lambda outcome: outside_untouched(outside)
    return listener.program(), lambda outcome: listener.reached() == set()


@pytest.mark.parametrize("name", ["fork", "write", "network"])
def test_hostile_completions_score_0_change_nothing_and_leave_nothing(name, private_tmp, outside):
    listener = Listener()
    try:
        program, harmless = attack(name, outside, listener)
        grader = parse_grader("code_tests:5")
        outcome = run_tests(program, "", grader.param.limits)
        assert grader.score(program, None, {"tests": "pass"}) == 0.0
        assert not outcome.passed and harmless(outcome), outcome.output[-1500:]
        assert_nothing_left(private_tmp)
    finally:
        listener.close()


def available_layers() -> dict:
    return sb.probe(sb.Limits())


# Which layers claim to stop each attack on their own (the kernel ones only where this machine has them).
ALONE = {"fork": ["seccomp", "audit", "rlimits"], "write": ["landlock", "audit", "drop_root"],
         "network": ["netns", "audit"]}


def layer_applies(layer: str, name: str, layers: dict) -> str | None:
    """Why `layer` cannot stop `name` alone on this machine, or None when it should."""
    state = layers[layer]
    if not state.startswith("on"):
        return state
    if layer == "rlimits" and os.geteuid() == 0:
        return "root ignores RLIMIT_NPROC"
    if layer == "drop_root" and state != "on (nobody)":
        return "root keeps uid 0 here (without capabilities), and owns the target"
    return None


@pytest.mark.parametrize("name", list(ALONE))
def test_each_attack_works_with_no_layer_and_each_layer_stops_it_alone(name, private_tmp, outside):
    layers = available_layers()
    listener = Listener()
    try:
        program, harmless = attack(name, outside, listener)
        bare = sb.run_python(program, sb.Limits(seconds=3, layers=()))
        assert bare.status in ("passed", "timeout") and not harmless(bare), bare.output[-1000:]  # it does harm
        for path in (outside, Path(str(outside) + ".new")):
            path.unlink(missing_ok=True)
        (outside.parent / "keep.txt").write_text("keep")
        (outside.parent / "link").unlink(missing_ok=True)
        stopped = []
        for layer in ALONE[name]:
            if layer_applies(layer, name, layers) is None:
                outcome = sb.run_python(program, sb.Limits(seconds=3, layers=(layer,)))
                assert not outcome.passed and harmless(outcome), (layer, outcome.output[-1000:])
                stopped.append(layer)
        assert "audit" in stopped
        assert_nothing_left(private_tmp)
    finally:
        listener.close()


def test_landlock_alone_also_refuses_tcp_and_signals_where_the_kernel_has_them(private_tmp):
    state = available_layers()["landlock"]
    abi = int(state.split("ABI ")[1].rstrip(")")) if state.startswith("on") else 0
    if abi < 6:
        pytest.skip(f"landlock: {state} (TCP needs ABI 4, signal scoping ABI 6)")
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    listener = Listener()
    try:
        only = sb.Limits(seconds=3, layers=("landlock",))
        kill = f"import os, signal\nos.kill({victim.pid}, signal.SIGKILL)\n"
        assert not sb.run_python(kill, only).passed and victim.poll() is None
        tcp = sb.run_python(listener.program(), only)
        assert "tcp [Errno 13] Permission denied" in tcp.output and "tcp" not in listener.reached()
        assert sb.run_python(kill, sb.Limits(seconds=3, layers=())).passed  # the control: unguarded, it kills
        victim.wait(5)
    finally:
        victim.kill()
        listener.close()


AROUND_THE_HOOK = ("import os, subprocess\nr, w = os.pipe()\n"
                   "subprocess._fork_exec(['/bin/echo', 'escaped'], [b'/bin'], True, (), None, None, -1, -1, -1, -1,"
                   " -1, -1, r, w, True, False, -1, None, None, None, -1, None, False)\nprint('forked around it')\n")


def test_a_fork_that_gets_round_the_audit_hook_is_stopped_by_the_kernel(private_tmp):
    # The audit hook is Python-level: calling the fork primitive directly is not audited. The kernel
    # layers (seccomp; RLIMIT_NPROC for a user other than root) are what stop it.
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the private _fork_exec signature differs between Python versions")
    around = sb.run_python(AROUND_THE_HOOK, sb.Limits(seconds=3, layers=("audit",)))
    assert around.passed and "forked around it" in around.output  # the hook alone does not see it
    layers = available_layers()
    if not layers["seccomp"].startswith("on") and os.geteuid() == 0:
        pytest.skip("neither seccomp nor RLIMIT_NPROC applies here")
    stopped = sb.run_python(AROUND_THE_HOOK)
    assert not stopped.passed and ("Operation not permitted" in stopped.output or "Resource temporarily" in stopped.output)
    assert_nothing_left(private_tmp)


def test_a_completion_cannot_signal_other_processes_or_load_ctypes(private_tmp):
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kill = f"import os, signal\nos.kill({victim.pid}, signal.SIGKILL)\n"
        assert not sb.run_python(kill).passed
        time.sleep(0.2)
        assert victim.poll() is None
    finally:
        victim.kill()
    escape = ("import sys\nassert 'ctypes' not in sys.modules\n"
              "try:\n    import ctypes\nexcept PermissionError as exc:\n    print(exc)\nelse:\n    print('loaded')\n")
    outcome = sb.run_python(escape)
    assert outcome.passed and "importing ctypes is not allowed" in outcome.output
    assert_nothing_left(private_tmp)


@pytest.mark.parametrize("pidfd", [True, False])
def test_the_wait_ends_at_exit_and_at_the_deadline_with_or_without_pidfd(pidfd, private_tmp, monkeypatch):
    if not pidfd:
        monkeypatch.delattr(os, "pidfd_open", raising=False)  # older kernels and macOS poll waitid instead
    quick = sb.run_python("print('done')", sb.Limits(seconds=3))
    assert quick.passed and quick.output == "done\n" and quick.seconds < 2
    # Output closed but still running: the deadline ends it.
    closed = sb.run_python("import os, time\nos.close(1)\nos.close(2)\ntime.sleep(60)\n", sb.Limits(seconds=1))
    assert closed.status == "timeout" and closed.seconds < 2
    assert_nothing_left(private_tmp)


def test_the_folder_is_deleted_even_when_the_program_locks_it(private_tmp):
    lock = "import os\nos.makedirs('a/b')\nopen('a/b/f', 'w').write('x')\nos.chmod('a/b', 0)\nos.chmod('a', 0)\n"
    assert sb.run_python(lock).passed
    assert_nothing_left(private_tmp)


def test_the_probe_names_every_layer_and_the_sandbox_runs_python():
    layers = available_layers()
    assert list(layers) == list(sb.LAYERS)
    assert layers["audit"] == "on" and layers["rlimits"] == "on"
    assert all(state.startswith(("on", "off: ")) for state in layers.values())
