"""Servers for tests: tiny random LoRA runs on a tiny scrambled base, served by a real uvicorn on a free
loopback port (in a thread of the test process, or as a `tunery serve` subprocess)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from adapter_helpers import make_adapter_run, write_base

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent
CHAT = [{"role": "user", "content": "Lena Park needs a room in Oslo for 2 nights."}]
PROMPTS = ["Lena Park needs a room in Oslo for 2 nights.", "What is the capital of France?",
           "Count from one to five.", "Hello there!", "Name a primary colour.", "Ben Kato books 4 nights in Bologna."]


def make_runs(folder: Path, tokenizer, names=("alpha", "beta")) -> tuple[Path, list[Path]]:
    """(the base folder, one LoRA run folder per name), each adapter with its own random weights."""
    base = write_base(folder / "base", tokenizer, seed=3, scrambled=True)
    runs = []
    for i, name in enumerate(names):
        run, _ = make_adapter_run(folder / "runs", tokenizer, base, seed=11 + i, name=name,
                                  target=("q_proj", "v_proj", "up_proj"), adapter_scale=0.5)
        runs.append(run)
    return base, runs


def wait_until_healthy(url: str, seconds: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not become healthy in {seconds} s")


@contextlib.contextmanager
def running_server(specs: list[str], **options):
    """A server in this process (uvicorn on a thread, port 0); yields (base URL, server state)."""
    from tunery.serve.handlers import Limits
    from tunery.serve.registry import EngineOptions
    from tunery.serve.server import ServeOptions, bound_socket, build_state, make_server

    limits = Limits(max_prompt_tokens=options.pop("max_prompt_tokens", 256), max_tokens=options.pop("max_tokens", 64))
    engine = EngineOptions(max_batch=options.pop("max_batch", 8), max_context=limits.max_prompt_tokens + limits.max_tokens,
                           prefill_tokens=options.pop("prefill_tokens", 512))
    serve_options = ServeOptions(host="127.0.0.1", port=0, engine=engine, limits=limits, **options)
    state = build_state(specs, serve_options, say=lambda text: None)
    sock = bound_socket("127.0.0.1", 0)
    server = make_server(state, serve_options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_until_healthy(url, 60)
        yield url, state
    finally:
        server.should_exit = True
        thread.join(30)
        state.scheduler.stop()
        if state.log is not None:
            state.log.close()
        sock.close()


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{SRC}{os.pathsep}{TESTS}"
    return env


@contextlib.contextmanager
def server_process(args: list[str], cwd: Path, seconds: float = 180.0):
    """`tunery serve ARGS --port 0` as a subprocess; yields (base URL, process)."""
    proc = subprocess.Popen([sys.executable, "-m", "tunery.cli.main", "serve", *args, "--port", "0"], cwd=cwd,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = _announced_url(proc, seconds)
        proc.log = []  # the rest of stderr, read on a thread so the pipe never fills
        threading.Thread(target=lambda: proc.log.extend(iter(proc.stderr.readline, "")), daemon=True).start()
        wait_until_healthy(url, seconds)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _announced_url(proc: subprocess.Popen, seconds: float) -> str:
    """The URL the server prints once it listens ('... on http://127.0.0.1:PORT/v1 ...')."""
    deadline = time.monotonic() + seconds
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"tunery serve exited with {proc.returncode}:\n{''.join(seen)[-3000:]}")
            continue
        seen.append(line)
        if " on http://" in line:
            return line.split(" on ")[1].split("/v1")[0]
    raise TimeoutError("tunery serve did not announce its address:\n" + "".join(seen)[-3000:])
