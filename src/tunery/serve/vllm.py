"""`tunery serve --engine vllm`: the same runs, under the same names, served by vLLM (GPU machines).

vLLM serves one base per process with LoRA adapters attached per request, which is what the built-in
engine does on CPU; at scale it adds paged attention, CUDA kernels and tensor parallelism. This module
only builds vLLM's command line from the run folders (base, `--lora-modules name=path`, the runs' chat
template, the largest LoRA rank) and hands the process over to it. The API key travels in the
environment (`VLLM_API_KEY`), not on the command line where `ps` shows it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from tunery.errors import TuneryError
from tunery.inference import read_run_info
from tunery.models.load import resolve_model_source
from tunery.runfolder import RunFolder, is_run_folder
from tunery.serve.registry import base_name, split_spec

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the --max-lora-rank values vLLM accepts


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _lora_runs(specs: list[str]) -> list[tuple[str, Path, dict]]:
    runs = []
    for spec in specs:
        name, path = split_spec(spec)
        folder = Path(path).expanduser()
        if not is_run_folder(folder):
            raise TuneryError(f"{path} is not a run folder", fix="with --engine vllm, give LoRA run folders "
                              "and the base with --base")
        info = read_run_info(folder)
        if info.get("adapter", "lora") not in ("lora", "qlora"):
            raise TuneryError(f"{path} is a full run; vLLM serves one base model per process",
                              fix=f"serve it on its own: tunery serve --engine vllm --base {RunFolder(folder).model}")
        runs.append((name or folder.resolve().name, folder.resolve(), info))
    return runs


def _one(values: set, what: str, fix: str):
    if len(values) > 1:
        raise TuneryError(f"the runs do not share one {what}: {', '.join(sorted(map(str, values)))}",
                          why="vLLM serves one base model and one chat template per process", fix=fix)
    return next(iter(values), None)


def _chat_template(runs) -> str | None:
    """The path of the runs' chat template (they must share one); None leaves the base's own."""
    templates = {}
    for _, folder, _ in runs:
        tokenizer = RunFolder(folder).tokenizer
        jinja = tokenizer / "chat_template.jinja"
        if jinja.is_file():
            templates[jinja.read_text(encoding="utf-8")] = str(jinja)
        elif (tokenizer / "tokenizer_config.json").is_file():
            config = json.loads((tokenizer / "tokenizer_config.json").read_text(encoding="utf-8"))
            if isinstance(config.get("chat_template"), str):
                templates.setdefault(config["chat_template"], config["chat_template"])
    _one(set(templates), "chat template", "serve runs with different templates from separate servers")
    return next(iter(templates.values()), None)


def _max_rank(runs) -> int:
    ranks = [json.loads((RunFolder(f).adapter / "adapter_config.json").read_text()).get("r", 8) for _, f, _ in runs]
    top = max(ranks, default=8)
    return next((r for r in LORA_RANKS if r >= top), top)


def vllm_command(specs: list[str], base: str | None, host: str, port: int, dtype: str = "auto",
                 max_context: int | None = None) -> tuple[list[str], str]:
    """(vLLM's argv, the name the base is served under) for these runs."""
    runs = _lora_runs(specs)
    base = base or _one({info["base_model"] for _, _, info in runs}, "base model",
                        "pass --base MODEL to put them all on one base")
    if base is None:
        raise TuneryError("nothing to serve", fix="name one or more LoRA run folders, or --base MODEL")
    served = base_name(base)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model_source(base),
            "--served-model-name", served, "--host", host, "--port", str(port), "--dtype", dtype]
    if runs:
        argv += ["--enable-lora", "--max-loras", str(len(runs)), "--max-lora-rank", str(_max_rank(runs)),
                 "--lora-modules", *[f"{name}={folder / 'adapter'}" for name, folder, _ in runs]]
        template = _chat_template(runs)
        if template:
            argv += ["--chat-template", template]
    if max_context:
        argv += ["--max-model-len", str(max_context)]
    return argv, served


def exec_vllm(specs: list[str], base: str | None, host: str, port: int, api_key: str | None,
              max_context: int | None = None) -> int:
    """Replace this process by vLLM's server (signals then reach vLLM directly)."""
    if not vllm_installed():
        raise TuneryError(
            "--engine vllm needs vLLM, which is not installed here",
            why="vLLM runs on CUDA GPUs (Linux); it has no build for CPU-only machines like this one",
            fix="on a GPU machine: pip install vllm; here, serve with the built-in engine (leave out --engine)")
    argv, _ = vllm_command(specs, base, host, port, max_context=max_context)
    env = dict(os.environ)
    if api_key:
        env["VLLM_API_KEY"] = api_key
    print("starting vLLM: " + " ".join(argv[1:]), file=sys.stderr, flush=True)
    os.execve(sys.executable, argv, env)
    return 0  # not reached
