"""`tunery serve`: load the runs, start the engine thread, and serve HTTP until SIGTERM or Ctrl-C.

Shutdown: the first SIGTERM (or SIGINT) closes the listening socket and answers new requests on open
connections with 503; requests already taken keep decoding for up to `shutdown_timeout` seconds, then
whatever is left ends with a clear error; the process exits 0. A second SIGINT exits at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tunery._deps import require
from tunery.errors import TuneryError
from tunery.serve.handlers import Limits
from tunery.serve.registry import EngineOptions, Registry, split_spec

LOOPBACK_NAMES = {"localhost"}


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    base: str | None = None
    engine: EngineOptions = field(default_factory=EngineOptions)
    limits: Limits = field(default_factory=Limits)
    max_queue: int = 64
    shutdown_timeout: float = 30.0
    log_requests: Path | None = None
    threads: int | None = None


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if not is_loopback(host) and not api_key:
        raise TuneryError(
            f"refusing to serve on {host} without an API key",
            why="anyone who can reach that address could use the models (and the admin routes)",
            fix="add --api-key KEY (or set TUNERY_API_KEY), or keep the default --host 127.0.0.1")


def load_models(registry: Registry, specs: list[str], base: str | None, say=print) -> None:
    """Serve `base` (when given) and every run, in order; names must be unique."""
    if not specs and not base:
        raise TuneryError("nothing to serve", fix="name one or more run folders, or --base MODEL")
    for spec in ([base] if base else []) + list(specs):
        name, path = split_spec(spec)
        say(f"loading {path} ...")
        for model in registry.install(registry.prepare(path, name, base)):
            say(f"  serving '{model.name}' ({model.kind}{', on ' + model.parent if model.parent else ''})")


def build_state(specs: list[str], options: ServeOptions, say=print):
    """The registry (models loaded), scheduler (started) and metrics of a server."""
    import torch

    from tunery.serve.app import ServerState
    from tunery.serve.metrics import Metrics
    from tunery.serve.reqlog import RequestLog
    from tunery.serve.scheduler import Scheduler

    if options.threads:
        torch.set_num_threads(options.threads)
    registry = Registry(options.engine)
    load_models(registry, specs, options.base, say)
    metrics = Metrics()
    scheduler = Scheduler(registry.engines, options.max_queue, metrics, housekeeping=registry.collect)
    log = RequestLog(options.log_requests) if options.log_requests else None
    state = ServerState(registry, scheduler, metrics, options.limits, options.api_key, log, options.base)
    scheduler.start()
    return state


def make_server(state, options: ServeOptions):
    """A uvicorn server whose SIGTERM drains the engine before the process exits 0."""
    uvicorn = require("uvicorn", extra="serve")
    from tunery.serve.app import build_app

    config = uvicorn.Config(build_app(state), host=options.host, port=options.port, log_level="warning",
                            timeout_graceful_shutdown=options.shutdown_timeout + 5, lifespan="off",
                            access_log=False)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            state.scheduler.begin_drain(options.shutdown_timeout)
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn re-raises a caught SIGTERM after shutting down, so the process would die by the
            # signal (exit 143); a drained server has done what SIGTERM asks and exits 0 instead.
            import threading

            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return DrainingServer(config)


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 picks a free one), so the real port is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise TuneryError(f"cannot listen on {host}:{port}", why=str(exc),
                          fix="pick another --port, or stop what holds this one") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(specs: list[str], options: ServeOptions) -> int:
    """Run the server in this process until it is told to stop; returns the exit code."""
    check_bind(options.host, options.api_key)
    require("fastapi", extra="serve")

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    state = build_state(specs, options, say)
    sock = bound_socket(options.host, options.port)
    port = sock.getsockname()[1]
    server = make_server(state, options)
    say(f"tunery serve: {len(state.registry.listed())} model(s) on http://{options.host}:{port}/v1 "
        f"(key {'required' if options.api_key else 'not required'}); Ctrl-C or SIGTERM stops")
    try:
        server.run(sockets=[sock])
    finally:
        state.scheduler.stop()
        if state.log is not None:
            state.log.close()
    say("tunery serve: stopped")
    return 0
