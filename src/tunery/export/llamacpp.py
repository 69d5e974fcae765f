"""A second, independent reader of our GGUF files: llama.cpp itself, through its C API.

This is the code that Ollama, LM Studio and llama-server run, so it catches what transformers' GGUF
loader forgives: a pre-tokenizer name llama.cpp does not know, a vocabulary it splits differently, a
chat template or end token it cannot find. PyPI has no wheel of llama-cpp-python for this platform
(it compiles llama.cpp at install time); llama-cpp-cffi ships llama.cpp prebuilt for CPU, and its
extension module exposes the C API unchanged. We load that extension on its own (the package's
`__init__` pulls dependencies we do not need) and call the C functions directly.

What `read_back` returns for a file and a list of token rows: llama.cpp's own tokenisation of each
rendered prompt, logits at every position, greedy continuations, the chat template string stored in
the file and the end-of-generation token ids.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch


def find_extension() -> Path | None:
    """The CPU build of llama.cpp inside an installed llama-cpp-cffi, without importing the package."""
    spec = importlib.util.find_spec("llama")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("_llama_cpp_cpu*.so"))
        if found:
            return found[0]
    return None


# The wheel is built with GCC 14, whose C++ runtime added one function, `__cxa_call_terminate` (what
# runs when an exception leaves a noexcept function). Older systems (Debian 12: GCC 12) lack it, and it
# is the only symbol missing. These installed extensions link that runtime statically and export it;
# loading one first, globally, supplies it. Where the system runtime is new enough nothing is preloaded.
RUNTIME_PROVIDERS = [("contourpy", "_contourpy*.so"), ("pyarrow", "libarrow_compute.so*")]


def _provide_missing_runtime() -> str | None:
    import ctypes

    for package, pattern in RUNTIME_PROVIDERS:
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            for candidate in sorted(Path(folder).glob(pattern)):
                ctypes.CDLL(str(candidate), mode=ctypes.RTLD_GLOBAL)
                return str(candidate)
    return None


def _load_extension(path: Path):
    loader = importlib.machinery.ExtensionFileLoader("_llama_cpp_cpu", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("_llama_cpp_cpu", loader))
    loader.exec_module(module)
    return module


def load_api():
    """(ffi, lib) of llama.cpp's C API, or None when llama-cpp-cffi is not installed."""
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
    logits: list[torch.Tensor]  # [positions, vocab] per row, for the rows given (not llama.cpp's ids)
    greedy: list[list[int]]
    chat_template: str | None
    end_ids: list[int]  # EOS and EOT as llama.cpp reads them from the file


class LlamaCpp:
    """One GGUF file loaded by llama.cpp on the CPU, with one context of `n_ctx` tokens."""

    def __init__(self, path: Path, n_ctx: int = 512, threads: int = 2):
        api = load_api()
        if api is None:
            raise ImportError("llama-cpp-cffi is not installed")
        self.ffi, self.lib = api
        self._silence_logs()
        self.lib.llama_backend_init()
        mparams = self.lib.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = self.lib.llama_model_load_from_file(str(path).encode(), mparams)
        if self.model == self.ffi.NULL:
            raise ValueError(f"llama.cpp could not load {path}")
        cparams = self.lib.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, n_ctx, n_ctx
        cparams.n_threads, cparams.n_threads_batch = threads, threads
        # The KV cache defaults to f16, which alone moves logits by ~1e-3: keep it in f32 so that the
        # comparison measures the file, not the cache.
        cparams.type_k, cparams.type_v = self.lib.GGML_TYPE_F32, self.lib.GGML_TYPE_F32
        self.ctx = self.lib.llama_init_from_model(self.model, cparams)
        self.vocab = self.lib.llama_model_get_vocab(self.model)
        self.n_vocab = self.lib.llama_vocab_n_tokens(self.vocab)

    def _silence_logs(self) -> None:
        # llama.cpp prints the whole model description to stderr; keep the callback alive on self.
        self._log = self.ffi.callback("void(enum ggml_log_level, const char *, void *)", lambda *_: None)
        self.lib.llama_log_set(self._log, self.ffi.NULL)

    def close(self) -> None:
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's tokenisation, special tokens parsed (as a server does with a rendered template)."""
        raw = text.encode()
        size = len(raw) + 8
        buffer = self.ffi.new("llama_token[]", size)
        n = self.lib.llama_tokenize(self.vocab, raw, len(raw), buffer, size, False, True)
        if n < 0:
            raise ValueError("tokenize buffer too small")
        return list(buffer[0:n])

    def logits(self, ids: list[int]) -> torch.Tensor:
        """Logits at every position of one row, from an empty cache."""
        self.lib.llama_kv_self_clear(self.ctx)
        self._decode(ids, start=0, all_logits=True)
        return torch.stack([self._row(i) for i in range(len(ids))])

    def greedy(self, ids: list[int], max_new_tokens: int, stop: set[int]) -> list[int]:
        """Greedy continuation, one token at a time through the cache."""
        self.lib.llama_kv_self_clear(self.ctx)
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
        text = self.lib.llama_model_chat_template(self.model, self.ffi.NULL)
        return None if text == self.ffi.NULL else self.ffi.string(text).decode()

    def end_ids(self) -> list[int]:
        ids = {self.lib.llama_vocab_eos(self.vocab), self.lib.llama_vocab_eot(self.vocab)}
        return sorted(i for i in ids if i >= 0)

    def _decode(self, ids: list[int], start: int, all_logits: bool) -> None:
        batch = self.lib.llama_batch_init(len(ids), 0, 1)
        try:
            for i, token in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = all_logits or i == len(ids) - 1
            batch.n_tokens = len(ids)
            if self.lib.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
        finally:
            self.lib.llama_batch_free(batch)

    def _row(self, i: int) -> torch.Tensor:
        pointer = self.lib.llama_get_logits_ith(self.ctx, i)
        return torch.frombuffer(bytearray(self.ffi.buffer(pointer, 4 * self.n_vocab)), dtype=torch.float32)


def read_back(path: Path, texts: list[str], rows: list[list[int]], max_new_tokens: int,
              stop: set[int]) -> ReadBack:
    """Everything the verification compares, read through llama.cpp (see the module docstring)."""
    llm = LlamaCpp(path)
    try:
        return ReadBack(
            prompt_ids=[llm.tokenize(t) for t in texts],
            logits=[llm.logits(r) for r in rows],
            greedy=[llm.greedy(r, max_new_tokens, stop) for r in rows],
            chat_template=llm.chat_template(),
            end_ids=llm.end_ids(),
        )
    finally:
        llm.close()
