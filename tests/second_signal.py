"""`tunery` with a second signal sent from inside a checkpoint write (for test_train_promises.py).

Run as `python tests/second_signal.py train CONFIG ...`. After tunery's signal handler has seen a first
signal (sent by the test), the first fsync of a file in a checkpoint folder that is not yet marked
COMPLETE sends the same signal again, from inside that write: a second Ctrl-C exactly while the checkpoint is being written,
every time, with no race against the clock. Only standard-library hooks are wrapped (signal.signal and
os.fsync), so the test does not depend on how the trainer is organised.
"""

from __future__ import annotations

import os
import signal
import sys

first: list[int] = []
sent: list[str] = []
_install, _fsync = signal.signal, os.fsync


def _install_tracking(signum, handler):
    if not callable(handler):
        return _install(signum, handler)

    def tracking(number, frame):
        first.append(number)
        return handler(number, frame)

    return _install(signum, tracking)


def _fsync_then_signal(fd):
    _fsync(fd)
    if first and not sent:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return
        folder = path if os.path.isdir(path) else os.path.dirname(path)  # a file, or the folder itself
        # A checkpoint still being written: under checkpoints/, its completeness marker not yet there
        # (the fsyncs after the marker belong to a checkpoint that is already complete).
        if f"{os.sep}checkpoints{os.sep}" in path and not os.path.exists(os.path.join(folder, "COMPLETE")):
            sent.append(folder)
            print(f"second signal while writing {folder}", flush=True)
            os.kill(os.getpid(), first[0])


signal.signal, os.fsync = _install_tracking, _fsync_then_signal

if __name__ == "__main__":
    from tunery.cli.main import main

    sys.argv = ["tunery", *sys.argv[1:]]
    main()
