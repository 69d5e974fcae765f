"""Bodies of `tunery serve` and `tunery data from-log` (wired in cli/main.py)."""

from __future__ import annotations

import json
from pathlib import Path

from tunery.errors import TuneryError


def run_serve(runs: list[str], base: str | None, host: str, port: int, api_key: str | None, engine: str,
              log_requests: Path | None, max_batch: int, max_queue: int, max_prompt_tokens: int,
              max_tokens: int, shutdown_timeout: float, dtype: str, threads: int | None,
              prefill_tokens: int = 512) -> int:
    """Serve the runs until SIGTERM / Ctrl-C; returns the exit code."""
    from tunery.serve.server import check_bind

    check_bind(host, api_key)
    if engine == "vllm":
        from tunery.serve.vllm import exec_vllm

        if log_requests:
            raise TuneryError("--log-requests is a feature of the built-in engine",
                              fix="leave out --engine vllm, or --log-requests")
        return exec_vllm(runs, base, host, port, api_key, max_prompt_tokens + max_tokens)
    if engine != "builtin":
        raise TuneryError(f"unknown engine '{engine}'", fix="use builtin (the default) or vllm")
    from tunery.serve.handlers import Limits
    from tunery.serve.registry import EngineOptions
    from tunery.serve.server import ServeOptions, serve

    options = ServeOptions(
        host=host, port=port, api_key=api_key, base=base, max_queue=max_queue,
        shutdown_timeout=shutdown_timeout, log_requests=log_requests, threads=threads,
        engine=EngineOptions(max_batch=max_batch, max_context=max_prompt_tokens + max_tokens,
                             prefill_tokens=prefill_tokens, dtype=dtype),
        limits=Limits(max_prompt_tokens=max_prompt_tokens, max_tokens=max_tokens))
    return serve(runs, options)


def run_from_log(file: Path, out: Path, models: list[str], since: str | None, until: str | None,
                 feedback: str, as_json: bool) -> int:
    """Write the training set of a request log; returns 0, or 1 when no example was kept."""
    from tunery.serve.fromlog import FromLogOptions, convert_log, parse_when

    options = FromLogOptions(models=tuple(models), since=parse_when(since) if since else None,
                             until=parse_when(until, end=True) if until else None, feedback=feedback)
    report = convert_log(file, out, options)
    print(json.dumps(report.to_json(), indent=2) if as_json else report.format_text())
    return 0 if report.written else 1
