"""A second, independent reader of our GGUF files: llama.cpp itself, through its C API.

This is the code that Ollama, LM Studio and llama-server run, so it catches what transformers' GGUF
loader forgives: a pre-tokenizer name llama.cpp does not know, a vocabulary it splits differently, a
chat template or end token it cannot find. Two bindings reach its C API (`llamacpp_bindings.py`):
llama-cpp-python when installed (PyPI has no CPU wheel of it: it compiles llama.cpp at install time,
so its llama.cpp is newer and knows more architectures, Qwen3 among them), else llama-cpp-cffi, which
ships llama.cpp prebuilt for CPU (CI's reader) and whose extension module exposes the C API unchanged.
We load that extension on its own (the package's `__init__` pulls dependencies we do not need) and
call the C functions directly.

Native code is kept out of the exporting process: `read_back_isolated` runs the reader in a child
process (`python -m tunery.export.llamacpp`), so a library that fails to load, a null handle or an
abort inside llama.cpp ends that child only, and the export reports "not verified by llama.cpp:
<reason>" after its GGUF is safely written. Only files listed by the installed distributions
themselves are loaded (their file lists in `importlib.metadata`), never whatever comes first on
`sys.path`.

What `read_back` returns for a file and a list of token rows: llama.cpp's own tokenisation of each
rendered prompt, logits at every position, greedy continuations, the chat template string stored in
the file and the end-of-generation token ids.
"""

from __future__ import annotations

import fnmatch
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunery.export import llamacpp_bindings as bindings

DISTRIBUTION = "llama-cpp-cffi"
EXTENSION = "_llama_cpp_cpu*"
READ_TIMEOUT_S = 900


class NotVerified(Exception):
    """llama.cpp could not read the file back; the message is the reason."""


def distribution_files(distribution: str, pattern: str) -> list[Path]:
    """Files of an installed distribution whose name matches `pattern`, from its own file list."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return []
    found = [Path(dist.locate_file(f)) for f in dist.files or [] if fnmatch.fnmatch(f.name, pattern)]
    return sorted(p for p in found if p.is_file())


def find_extension() -> Path | None:
    """The CPU build of llama.cpp inside the installed llama-cpp-cffi, for this interpreter."""
    for path in distribution_files(DISTRIBUTION, EXTENSION):
        if any(path.name.endswith(suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES):
            return path
    return None


# The wheel is built with GCC 14, whose C++ runtime added one function, `__cxa_call_terminate` (what
# runs when an exception leaves a noexcept function). Older systems (Debian 12: GCC 12) lack it, and it
# is the only symbol missing. These installed extensions link that runtime statically and export it;
# loading one first, globally, supplies it -- in the reader's own process only. Where the system
# runtime is new enough nothing is preloaded.
RUNTIME_PROVIDERS = [("contourpy", "_contourpy*.so"), ("pyarrow", "libarrow_compute.so*")]


def runtime_candidates() -> list[Path]:
    """Libraries that can supply the missing symbol, each listed by its own installed distribution."""
    return [p for dist, pattern in RUNTIME_PROVIDERS for p in distribution_files(dist, pattern)]


def _provide_missing_runtime() -> str | None:
    import ctypes

    for candidate in runtime_candidates():
        try:
            ctypes.CDLL(str(candidate), mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        return str(candidate)
    return None


def _load_extension(path: Path):
    loader = importlib.machinery.ExtensionFileLoader("_llama_cpp_cpu", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("_llama_cpp_cpu", loader))
    loader.exec_module(module)
    return module


def reader_name() -> str | None:
    """'llama-cpp-python 0.3.36' or 'llama-cpp-cffi 0.4.42': the binding the reader will use (see
    `llamacpp_bindings.chosen_reader`), or None when neither is installed."""
    chosen = bindings.chosen_reader(find_extension() is not None)
    return bindings.describe(chosen) if chosen else None


def load_binding():
    """The chosen binding of llama.cpp's C API (raises NotVerified when none is installed)."""
    chosen = bindings.chosen_reader(find_extension() is not None)
    if chosen == "llama-cpp-python":
        return bindings.load_python_binding()
    api = load_api() if chosen else None
    if api is None:
        raise NotVerified("llama.cpp is not installed (neither llama-cpp-python nor llama-cpp-cffi)")
    return bindings.CffiBinding(*api)


def load_api():
    """(ffi, lib) of llama-cpp-cffi's C API, or None when it is not installed (the quantizer's)."""
    path = find_extension()
    if path is None:
        return None
    try:
        module = _load_extension(path)
    except ImportError as exc:
        if "__cxa_call_terminate" not in str(exc) or _provide_missing_runtime() is None:
            raise
        module = _load_extension(path)
    return module.ffi, module.lib


@dataclass
class ReadBack:
    prompt_ids: list[list[int]]  # llama.cpp's tokenisation of each rendered prompt
    logits: list  # [positions, vocab] per row (numpy in the reader, torch once returned), rows as given
    greedy: list[list[int]]
    chat_template: str | None
    end_ids: list[int]  # EOS and EOT as llama.cpp reads them from the file
    greedy_seconds: float = 0.0  # wall time of the greedy answers (prompt processing included)


class LlamaCpp:
    """One GGUF file loaded by llama.cpp on the CPU, with one context of `n_ctx` tokens. Every handle
    the C API returns is checked: a null one is a `NotVerified` with the reason, never a crash later."""

    def __init__(self, path: Path, n_ctx: int = 512, threads: int = 2, adapter: Path | None = None):
        self.api = load_binding()
        self.lib = self.api.lib
        self.model = self.ctx = self.adapter = None
        self._silence_logs()
        self.lib.llama_backend_init()
        mparams = self.lib.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = self._checked(self.lib.llama_model_load_from_file(str(path).encode(), mparams),
                                   f"llama.cpp could not load {path.name}" + self._last_error())
        cparams = self.lib.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, n_ctx, n_ctx
        cparams.n_threads, cparams.n_threads_batch = threads, threads
        # The KV cache defaults to f16, which alone moves logits by ~1e-3: keep it in f32 so that the
        # comparison measures the file, not the cache.
        cparams.type_k, cparams.type_v = bindings.GGML_TYPE_F32, bindings.GGML_TYPE_F32
        # llama.cpp since mid-2025 turns flash attention on by default ("auto"); its CPU kernel works
        # in f16 and moves logits by ~2e-3 of the largest (measured with llama-cpp-python 0.3.36: 0.011
        # of 4.54 on a tiny Llama, 5.6e-6 with it off). Off, like the f32 cache, so that the comparison
        # measures the file. (llama-cpp-cffi's older llama.cpp has it off by default.)
        if hasattr(cparams, "flash_attn_type"):
            cparams.flash_attn_type = 0  # LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = self._checked(self.lib.llama_init_from_model(self.model, cparams),
                                 "llama.cpp could not create a context")
        if adapter is not None:  # a LoRA GGUF applied at load time, as llama-server --lora does
            self.adapter = self._checked(self.lib.llama_adapter_lora_init(self.model, str(adapter).encode()),
                                         f"llama.cpp could not load the LoRA adapter {Path(adapter).name}")
            if self.api.set_adapter(self.ctx, self.adapter, 1.0) != 0:
                raise NotVerified("llama.cpp could not apply the LoRA adapter")
        self.vocab = self._checked(self.lib.llama_model_get_vocab(self.model), "llama.cpp found no vocabulary")
        self.n_vocab = self.lib.llama_vocab_n_tokens(self.vocab)
        if self.n_vocab <= 0:
            raise NotVerified(f"llama.cpp reads a vocabulary of {self.n_vocab} tokens")

    def _checked(self, handle, what: str):
        if not handle:  # a NULL pointer: false in cffi and ctypes alike
            raise NotVerified(what)
        return handle

    def _silence_logs(self) -> None:
        # llama.cpp prints the whole model description to stderr; keep only its error lines (the reason
        # a load fails, e.g. "unknown model architecture"), and the callback alive on self.
        self.errors: list[str] = []

        def keep_errors(level: int, text: str) -> None:
            if level == bindings.GGML_LOG_LEVEL_ERROR and text.strip():
                self.errors.append(text.strip())

        self._log = self.api.log_callback(keep_errors)
        self.lib.llama_log_set(self._log, self.api.null)

    def _last_error(self) -> str:
        return f" ({self.errors[0]})" if self.errors else ""  # the first says why; the rest, that it failed

    def close(self) -> None:
        if self.ctx is not None:
            self.lib.llama_free(self.ctx)
        if self.adapter is not None:
            self.lib.llama_adapter_lora_free(self.adapter)
        if self.model is not None:
            self.lib.llama_model_free(self.model)

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's tokenisation, special tokens parsed (as a server does with a rendered template)."""
        raw = text.encode()
        size = len(raw) + 8
        buffer = self.api.token_array(size)
        n = self.lib.llama_tokenize(self.vocab, raw, len(raw), buffer, size, False, True)
        if n < 0:
            raise NotVerified("llama.cpp's tokenize buffer was too small")
        return list(buffer[0:n])

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of one row, from an empty cache."""
        self.api.clear_cache(self.ctx)
        self._decode(ids, start=0, all_logits=True)
        return np.stack([self._row(i) for i in range(len(ids))])

    def greedy(self, ids: list[int], max_new_tokens: int, stop: set[int]) -> list[int]:
        """Greedy continuation, one token at a time through the cache."""
        self.api.clear_cache(self.ctx)
        self._decode(ids, start=0, all_logits=False)
        out, position = [], len(ids)
        for _ in range(max_new_tokens):
            token = int(self._row(-1).argmax())
            if token in stop:  # cut before the stop token, as tunery.inference.generate_ids does
                break
            out.append(token)
            self._decode([token], start=position, all_logits=False)
            position += 1
        return out

    def chat_template(self) -> str | None:
        return self.api.string(self.lib.llama_model_chat_template(self.model, self.api.null))

    def end_ids(self) -> list[int]:
        ids = {self.lib.llama_vocab_eos(self.vocab), self.lib.llama_vocab_eot(self.vocab)}
        return sorted(i for i in ids if i >= 0)

    def _decode(self, ids: list[int], start: int, all_logits: bool) -> None:
        batch = self.lib.llama_batch_init(len(ids), 0, 1)
        if not batch.token:
            raise NotVerified("llama.cpp could not allocate a batch")
        try:
            for i, token in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = int(all_logits or i == len(ids) - 1)
            batch.n_tokens = len(ids)
            if self.lib.llama_decode(self.ctx, batch) != 0:
                raise NotVerified("llama_decode failed")
        finally:
            self.lib.llama_batch_free(batch)

    def _row(self, i: int) -> np.ndarray:
        pointer = self._checked(self.lib.llama_get_logits_ith(self.ctx, i), f"llama.cpp returned no logits at {i}")
        return self.api.floats(pointer, self.n_vocab)


def threads_wanted() -> int:
    """llama.cpp's thread count: OMP_NUM_THREADS when set (so a shared machine can ask for 1), else 2."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 2


def read_back(path: Path, texts: list[str], rows: list[list[int]], max_new_tokens: int,
              stop: set[int], adapter: Path | None = None, with_logits: bool = True) -> ReadBack:
    """Everything the verification compares, read through llama.cpp in this process (see the module
    docstring; the export calls `read_back_isolated`). `adapter`: a LoRA GGUF applied over `path`."""
    # The context holds the longest prompt and its answer; threads follow OMP_NUM_THREADS, as torch does.
    n_ctx = max([512] + [len(r) + max_new_tokens + 1 for r in rows])
    llm = LlamaCpp(path, n_ctx=n_ctx, threads=threads_wanted(), adapter=adapter)
    try:
        # Logits of every position of every row: the probes want them, answers to a task do not
        # (a 49k vocabulary makes them ~200 kB per token).
        logits = [llm.logits(r) if with_logits else np.zeros((0,), np.float32) for r in rows]
        start = time.perf_counter()
        greedy = [llm.greedy(r, max_new_tokens, stop) for r in rows]
        seconds = time.perf_counter() - start
        return ReadBack(prompt_ids=[llm.tokenize(t) for t in texts], logits=logits, greedy=greedy,
                        chat_template=llm.chat_template(), end_ids=llm.end_ids(), greedy_seconds=seconds)
    finally:
        llm.close()


def read_back_isolated(path: Path, texts: list[str], rows: list[list[int]], max_new_tokens: int,
                       stop: set[int], timeout: float = READ_TIMEOUT_S, adapter: Path | None = None,
                       with_logits: bool = True) -> ReadBack:
    """`read_back` in a child process; raises `NotVerified` with the reason when it does not succeed."""
    from safetensors.numpy import load_file

    import tunery

    with tempfile.TemporaryDirectory(prefix="tunery-llama-") as folder:
        work = Path(folder)
        request = {"path": str(Path(path).resolve()), "texts": texts, "rows": rows,
                   "max_new_tokens": max_new_tokens, "stop": sorted(stop),
                   "adapter": str(Path(adapter).resolve()) if adapter else None, "with_logits": with_logits}
        (work / "request.json").write_text(json.dumps(request))
        package_root = str(Path(tunery.__file__).resolve().parents[1])
        env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        try:
            proc = subprocess.run([sys.executable, "-m", "tunery.export.llamacpp", str(work)], env=env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise NotVerified(f"the reader took longer than {timeout:.0f} s") from None
        if proc.returncode != 0:
            raise NotVerified(_failure(proc))
        result = json.loads((work / "result.json").read_text())
        logits = load_file(str(work / "logits.safetensors"))
    import torch

    return ReadBack(result["prompt_ids"], [torch.from_numpy(logits[f"row{i}"]) for i in range(len(rows))],
                    result["greedy"], result["chat_template"], result["end_ids"], result.get("greedy_seconds", 0.0))


def _failure(proc: subprocess.CompletedProcess) -> str:
    if proc.returncode < 0:
        return f"the reader process died (signal {-proc.returncode})"
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"the reader process exited with code {proc.returncode}"


def _child(folder: Path) -> int:
    """The reader process: request.json in, result.json + logits.safetensors out; errors on stderr."""
    from safetensors.numpy import save_file

    from tunery import faults

    request = json.loads((folder / "request.json").read_text())
    faults.reached("llama-reader")
    try:
        got = read_back(Path(request["path"]), request["texts"], request["rows"], request["max_new_tokens"],
                        set(request["stop"]), Path(request["adapter"]) if request.get("adapter") else None,
                        request.get("with_logits", True))
    except (NotVerified, ImportError, OSError) as exc:
        print(str(exc) or type(exc).__name__, file=sys.stderr)
        return 1
    save_file({f"row{i}": np.ascontiguousarray(x) for i, x in enumerate(got.logits)}, str(folder / "logits.safetensors"))
    (folder / "result.json").write_text(json.dumps({"prompt_ids": got.prompt_ids, "greedy": got.greedy,
                                                     "chat_template": got.chat_template, "end_ids": got.end_ids,
                                                     "greedy_seconds": got.greedy_seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1])))
