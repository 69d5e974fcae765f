"""`tunery studio`: serve the studio app with uvicorn on 127.0.0.1 (another address needs a token)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path

from tunery._deps import require
from tunery.errors import TuneryError


def check_studio_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token: the studio starts processes and reads files."""
    from tunery.serve.server import is_loopback

    if not is_loopback(host) and not token:
        raise TuneryError(
            f"refusing to open the studio on {host} without a token",
            why="anyone who can reach that address could start training runs and read your run folders",
            fix="add --token TOKEN (or set TUNERY_STUDIO_TOKEN), or keep the default --host 127.0.0.1")


def run_studio(runs_dir: Path, host: str, port: int, token: str | None, serve_url: str | None = None,
               serve_key: str | None = None) -> int:
    """Serve until Ctrl-C or SIGTERM; training runs the studio started get SIGTERM (they checkpoint)."""
    check_studio_bind(host, token)
    require("fastapi", extra="studio")
    uvicorn = require("uvicorn", extra="studio")
    from tunery.serve.server import bound_socket
    from tunery.studio.app import create_app

    from tunery.studio.served import Server

    app = create_app(runs_dir, token, server=Server(serve_url, serve_key) if serve_url else None)
    sock = bound_socket(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/"
    print(f"tunery studio: {url}{'?token=TOKEN' if token else ''} over {runs_dir.resolve()}; Ctrl-C stops",
          file=sys.stderr, flush=True)
    server = _server_class(uvicorn)(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5,
                                                   access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        app.state.jobs.shutdown()
    print("tunery studio: stopped", file=sys.stderr, flush=True)
    return 0


def _server_class(uvicorn):
    """uvicorn's server, except that SIGTERM/SIGINT end `run` normally instead of being raised again
    after shutdown (which would kill the process before the studio's runs get their SIGTERM)."""

    class StudioServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return StudioServer
