"""The child side of the code sandbox: closes the exits, then runs ``main.py`` of its working folder.

This file is not imported by tunery: `tunery.graders.sandbox` passes its text to ``python -I -S -c``
(isolated mode, no site-packages), with the folder and a ``key=value`` line per setting (limits, layers)
as arguments. It uses the standard library only, and as little of it as it can: every import is paid
once per scored completion (json alone would add about 7 ms).

Order matters: the kernel layers that need privileges or `ctypes` come first, the uid drop and the
resource limits next, the Python audit hook last, and only then is the untrusted program run.

Layers (each can be switched off for tests; `probe` prints which ones took effect):

- ``netns``: a new network namespace (as root directly, else inside a new user namespace): no network
  interface but a loopback that is down, so nothing can be reached over IP, UDP included.
- ``landlock``: the kernel's Landlock LSM (Linux 5.13+): writing, creating, removing and renaming files
  is allowed only beneath the folder (and /dev/null); TCP connect and bind are refused (ABI 4+);
  signals and abstract Unix sockets stay inside the sandbox (ABI 6+).
- ``drop_root``: when started as root, become ``nobody`` (uid and gid 65534), so that file permissions
  apply; where nobody could not read the standard library, stay uid 0 but drop every capability.
- ``seccomp``: a seccomp filter refuses fork, clone (threads too) and exec for any uid (root ignores
  RLIMIT_NPROC).
- ``rlimits``: address space, CPU seconds, file size, open files, no core files, and RLIMIT_NPROC 0 so
  that fork (and threads) fail for a user other than root.
- ``audit``: a `sys.addaudithook` guard that refuses sockets, new processes, signals, ctypes and writes
  outside the folder, naming what it refused. It is Python-level: the kernel layers are what hold
  against code that works around it.
"""

import os
import sys


def _libc():
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def new_network_namespace() -> str:
    """Enter a network namespace of our own: 'on', or why not."""
    ctypes, libc = _libc()
    newnet, newuser = 0x40000000, 0x10000000
    uid, gid = os.getuid(), os.getgid()
    flags = newnet if uid == 0 else newnet | newuser
    if libc.unshare(flags) != 0:
        return "off: unshare: " + os.strerror(ctypes.get_errno())
    if uid != 0:  # keep our own ids inside the user namespace (without a map they read as 65534)
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    return "on"


# Landlock: linux/landlock.h. Rights are bit flags; each ABI version adds some.
FS_WRITE_RIGHTS = [  # (bit, first ABI with it)
    (1 << 1, 1), (1 << 4, 1), (1 << 5, 1), (1 << 6, 1), (1 << 7, 1), (1 << 8, 1), (1 << 9, 1), (1 << 10, 1),
    (1 << 11, 1), (1 << 12, 1), (1 << 13, 2), (1 << 14, 3), (1 << 15, 5)]
FILE_RIGHTS = (1 << 1) | (1 << 14)  # write, truncate: what a rule on a single file (/dev/null) may grant
NET_TCP_BIND_CONNECT, SCOPE_UNIX_AND_SIGNAL = 0b11, 0b11
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # the same on every architecture


def landlock(root: str) -> str:
    """Allow writes beneath `root` only, refuse TCP, scope signals: 'on (ABI n)', or why not."""
    ctypes, libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return "off: Landlock is not available (" + os.strerror(ctypes.get_errno()) + ")"
    fs = sum(bit for bit, since in FS_WRITE_RIGHTS if abi >= since)
    fields = [fs] + ([NET_TCP_BIND_CONNECT] if abi >= 4 else []) + ([SCOPE_UNIX_AND_SIGNAL] if abi >= 6 else [])
    attr = (ctypes.c_uint64 * len(fields))(*fields)
    ruleset = libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                           ctypes.c_uint32(0))
    if ruleset < 0:
        return "off: landlock_create_ruleset: " + os.strerror(ctypes.get_errno())

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    for path, rights in ((root, fs), ("/dev/null", FILE_RIGHTS & fs)):
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        rule = PathBeneath(rights, fd)
        added = libc.syscall(SYS_ADD_RULE, ruleset, ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0))
        os.close(fd)
        if added != 0:
            return f"off: landlock_add_rule {path}: " + os.strerror(ctypes.get_errno())
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: required to restrict ourselves without privileges
    if libc.syscall(SYS_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) != 0:
        return "off: landlock_restrict_self: " + os.strerror(ctypes.get_errno())
    os.close(ruleset)
    return f"on (ABI {abi})"


def drop_root(become_nobody: bool) -> str:
    """As root, give up privileges for good: become nobody (uid/gid 65534) when the parent made the
    folder nobody's (it does when the standard library is readable by others), else keep uid 0 without
    any capability. 'on ...', or why not."""
    if os.geteuid() != 0:
        return "off: not root"
    if become_nobody:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)  # from root to another uid: every capability goes too
        return "on (nobody)"
    ctypes, libc = _libc()
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):  # the bounding set first: dropping it needs CAP_SETPCAP
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: all empty (two 32-bit words)
    if libc.syscall(SYSCALLS[ARCH]["capset"], ctypes.byref(header), ctypes.byref(data)) != 0:
        return "off: capset: " + os.strerror(ctypes.get_errno())
    return "on (uid 0 without capabilities: the standard library is not readable by nobody)"


# seccomp: syscalls that start or replace a process, per architecture (a process started by
# someone else's syscall table, e.g. i386 calls on x86_64, is refused everything).
ARCH = os.uname().machine
SYSCALLS = {
    "x86_64": {"audit_arch": 0xC000003E, "capset": 126,
               "deny": {"clone": 56, "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "clone3": 435}},
    "aarch64": {"audit_arch": 0xC00000B7, "capset": 91,
                "deny": {"clone": 220, "execve": 221, "execveat": 281, "clone3": 435}},
}


def seccomp_no_processes() -> str:
    """Refuse fork, clone (threads too), and exec with EPERM, for any uid: 'on', or why not."""
    if ARCH not in SYSCALLS:
        return f"off: no syscall table for {ARCH}"
    ctypes, libc = _libc()
    table = SYSCALLS[ARCH]
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    numbers = list(table["deny"].values())
    # 0 load arch; 1 wrong arch -> deny; 2 load nr; 3 x32 numbers -> deny; then one test per number.
    code = [(ld, 0, 0, 4), (jeq, 0, len(numbers) + 3, table["audit_arch"]), (ld, 0, 0, 0),
            (jge, len(numbers) + 1, 0, 0x40000000)]
    code += [(jeq, len(numbers) - i, 0, nr) for i, nr in enumerate(numbers)]
    code += [(ret, 0, 0, 0x7FFF0000), (ret, 0, 0, 0x00050000 | 1)]  # SECCOMP_RET_ALLOW, RET_ERRNO(EPERM)

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Filter))]

    filters = (Filter * len(code))(*[Filter(*c) for c in code])
    program = Program(len(code), filters)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS, required for an unprivileged filter
    if libc.prctl(22, 2, ctypes.byref(program), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        return "off: seccomp: " + os.strerror(ctypes.get_errno())
    return "on"


def set_limits(cfg: dict) -> str:
    """Every resource limit; 'on', or 'on except ...' naming a limit this system refused (macOS
    refuses some address-space limits)."""
    import resource

    r = resource
    limits = [("RLIMIT_AS", cfg["memory_bytes"]), ("RLIMIT_FSIZE", cfg["file_bytes"]),
              ("RLIMIT_NOFILE", cfg["open_files"]), ("RLIMIT_CORE", 0), ("RLIMIT_NPROC", 0)]
    # The soft CPU limit sends SIGXCPU (which kills); the hard one, a second later, SIGKILL.
    pairs = [(name, (value, value)) for name, value in limits]
    pairs.append(("RLIMIT_CPU", (cfg["cpu_seconds"], cfg["cpu_seconds"] + 1)))
    refused = []
    for name, pair in pairs:
        try:
            r.setrlimit(getattr(r, name), pair)
        except (OSError, ValueError) as exc:
            refused.append(f"{name} ({exc})")
    return "on" if not refused else "on except " + ", ".join(refused)


PROCESS_EVENTS = frozenset({"os.system", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.kill",
                  "os.killpg", "subprocess.Popen", "pty.spawn", "resource.setrlimit", "resource.prlimit",
                  "os.symlink", "os.link", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
                  "os.chroot", "os.unshare", "os.setns", "os.pidfd_open"})
PATH_EVENTS = tuple({"os.rename": 2, "os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1,
               "os.truncate": 1, "os.utime": 1, "os.setxattr": 1, "os.removexattr": 1, "os.chflags": 1,
               "os.lchflags": 1, "os.mkfifo": 1, "os.mknod": 1, "shutil.chown": 1}.items())
DIR_FD_LAST = frozenset({"os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.utime"})
BLOCKED_IMPORTS = ("ctypes", "_ctypes")


def install_audit_hook(root: str) -> str:
    """Refuse what the program has no business doing, from Python. The hook keeps its own references
    to the functions it calls (a program could otherwise replace `os.fspath` and the like), and no
    name outside the hook refers to it."""
    fspath, getcwd, o_write = os.fspath, os.getcwd, os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    is_a, str_, bytes_, int_, any_, PermissionError_ = isinstance, str, bytes, int, any, PermissionError
    # Local, immutable copies: the program can reach this module's globals through frames, not these.
    process_events, path_events, dir_fd_last = PROCESS_EVENTS, dict(PATH_EVENTS), DIR_FD_LAST
    blocked_imports = BLOCKED_IMPORTS
    prefix = root.rstrip("/") + "/"

    def inside(path) -> bool:
        if is_a(path, int_):
            return True  # an already open descriptor: it was allowed when opened
        path = fspath(path)
        if is_a(path, bytes_):
            path = path.decode("utf-8", "surrogateescape")
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        parts = []
        for part in path.split("/"):
            if part == "..":
                parts = parts[:-1]
            elif part not in ("", "."):
                parts.append(part)
        return ("/" + "/".join(parts) + "/").startswith(prefix)

    def refuse(what: str):
        raise PermissionError_(f"tunery sandbox: {what} is not allowed here")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = any_(c in mode for c in "wax+") if is_a(mode, str_) else bool((flags or 0) & o_write)
            if writes and path is not None and not inside(path):
                refuse(f"writing {path!r} (outside the working folder)")
        elif event in path_events:
            for path in args[: path_events[event]]:
                if not inside(path):
                    refuse(f"{event} on {path!r} (outside the working folder)")
            if event in dir_fd_last and args[-1] not in (None, -1):  # -1: no folder descriptor given
                refuse(f"{event} relative to a folder descriptor")
        elif event in process_events or event.startswith(("socket.", "ctypes.")):
            refuse(event)
        elif event == "import" and args[0].split(".")[0] in blocked_imports:
            refuse(f"importing {args[0]}")

    sys.addaudithook(hook)
    return "on"


def forget_ctypes() -> None:
    """Remove ctypes from the interpreter's module table: its ready-made function pointers (memmove)
    would let a program rewrite memory, and its calls are not all audited. A new import is refused."""
    for name in [n for n in sys.modules if n.split(".")[0] in BLOCKED_IMPORTS]:
        del sys.modules[name]


def set_up(cfg: dict) -> dict:
    """Every layer the configuration asks for, in order; {layer: 'on' or why it is off}."""
    root = cfg["root"]
    layers = {}
    steps = [("netns", new_network_namespace), ("landlock", lambda: landlock(root)),
             ("drop_root", lambda: drop_root(cfg["nobody"])),
             ("seccomp", seccomp_no_processes), ("rlimits", lambda: set_limits(cfg))]
    linux_only = ("netns", "landlock", "drop_root", "seccomp")  # raw syscall numbers and ids of Linux
    for name, step in steps:
        if not cfg["layers"].get(name):
            layers[name] = "off: not asked"
        elif name in linux_only and not sys.platform.startswith("linux"):
            layers[name] = f"off: needs Linux (this is {sys.platform})"
        else:
            try:
                layers[name] = step()
            except OSError as exc:  # reported by the probe; the layers after it still apply
                layers[name] = f"off: {exc}"
    forget_ctypes()
    layers["audit"] = install_audit_hook(root) if cfg["layers"].get("audit") else "off: not asked"
    return layers


def run_program(path: str, code) -> None:
    """Run `code` as the __main__ module (a fresh module, so dataclasses and pickling find it)."""
    module = type(sys)("__main__")
    module.__file__ = path
    sys.modules["__main__"] = module
    exec(code, module.__dict__)


def read_config(root: str, text: str) -> dict:
    """The settings the parent wrote as ``key=value`` lines (see `sandbox.Limits.runner_args`)."""
    cfg = dict(line.split("=", 1) for line in text.split("\n") if line)
    numbers = {k: int(cfg[k]) for k in ("cpu_seconds", "memory_bytes", "file_bytes", "open_files")}
    layers = dict.fromkeys(cfg["layers"].split(","), True) if cfg["layers"] else {}
    return {"root": root, "probe": cfg["probe"] == "1", "nobody": cfg["nobody"] == "1", "layers": layers, **numbers}


def main() -> None:
    cfg = read_config(sys.argv[1], sys.argv[2])
    os.chdir(cfg["root"])
    path = os.path.join(cfg["root"], "main.py")
    with open(path, encoding="utf-8") as f:  # read before dropping root: the folders above may be closed
        source = f.read()
    layers = set_up(cfg)
    if cfg["probe"]:  # one line, layer=state pairs between tabs
        print("\t".join(f"{name}={state}" for name, state in layers.items()), flush=True)
    run_program(path, compile(source, path, "exec"))


main()
