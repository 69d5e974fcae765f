"""The two ways tunery reaches llama.cpp's C API, behind one small interface.

- llama-cpp-python (`llama_cpp`, ctypes): compiled from source at install time (no CPU wheel on PyPI),
  so its llama.cpp is as new as the release; 0.3.36 reads Qwen3, which the other does not. Used when
  installed. Only its `llama_cpp.llama_cpp` module (the C API) is loaded, from the files its own
  distribution lists; the package's `__init__` (the high-level `Llama` class, server and cache, with
  dependencies tunery does not need) is not run.
- llama-cpp-cffi (cffi): llama.cpp prebuilt in a wheel (CI's reader, `make install-dev`), from early
  2025; see `llamacpp.py` for how its extension is loaded.

`TUNERY_LLAMA_CPP_READER=llama-cpp-cffi` (or `llama-cpp-python`) picks one when both are installed.
The two differ only in how pointers, strings, arrays and callbacks are spelled, and in three calls
llama.cpp renamed between their versions (KV-cache clearing, LoRA setting); both are handled here.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

PYTHON_DISTRIBUTION = "llama_cpp_python"
CFFI_DISTRIBUTION = "llama-cpp-cffi"
READERS = ("llama-cpp-python", "llama-cpp-cffi")
GGML_TYPE_F32 = 0  # ggml's type enum (ggml.h), the same in both builds
GGML_LOG_LEVEL_ERROR = 4  # ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5


def version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def python_binding_module() -> Path | None:
    """llama-cpp-python's C API module (`llama_cpp/llama_cpp.py`), from its distribution's file list."""
    try:
        dist = importlib.metadata.distribution(PYTHON_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or []:
        if str(entry).replace("\\", "/") == "llama_cpp/llama_cpp.py":
            path = Path(dist.locate_file(entry))
            return path if path.is_file() else None
    return None


def chosen_reader(cffi_found: bool) -> str | None:
    """Which binding the reader uses: the one the environment variable names, else llama-cpp-python
    when installed, else llama-cpp-cffi when installed; None when neither is."""
    available = [name for name, found in (("llama-cpp-python", python_binding_module() is not None),
                                          ("llama-cpp-cffi", cffi_found)) if found]
    wanted = os.environ.get("TUNERY_LLAMA_CPP_READER", "")
    if wanted:
        return wanted if wanted in available else None
    return available[0] if available else None


def describe(reader: str) -> str:
    """'llama-cpp-python 0.3.36': the binding and its installed version, as records name the reader."""
    distribution = PYTHON_DISTRIBUTION if reader == "llama-cpp-python" else CFFI_DISTRIBUTION
    return f"{reader} {version_of(distribution) or '?'}"


class CffiBinding:
    """llama-cpp-cffi's extension module: `lib` holds the C functions, `ffi` spells the types."""

    def __init__(self, ffi, lib):
        self.ffi, self.lib = ffi, lib
        self.null = ffi.NULL

    def token_array(self, size: int):
        return self.ffi.new("llama_token[]", size)

    def string(self, pointer) -> str | None:
        return None if pointer == self.ffi.NULL else self.ffi.string(pointer).decode()

    def floats(self, pointer, count: int) -> np.ndarray:
        return np.frombuffer(bytes(self.ffi.buffer(pointer, 4 * count)), dtype=np.float32).copy()

    def log_callback(self, handler):
        def call(level, text, _user) -> None:
            handler(int(level), self.ffi.string(text).decode(errors="replace"))

        return self.ffi.callback("void(enum ggml_log_level, const char *, void *)", call)

    def clear_cache(self, ctx) -> None:
        self.lib.llama_kv_self_clear(ctx)

    def set_adapter(self, ctx, adapter, scale: float) -> int:
        return self.lib.llama_set_adapter_lora(ctx, adapter, scale)


class CtypesBinding:
    """llama-cpp-python's `llama_cpp.llama_cpp` module: ctypes functions named as in llama.h."""

    def __init__(self, module):
        self.lib = module
        self.null = None

    def token_array(self, size: int):
        return (self.lib.llama_token * size)()

    def string(self, value) -> str | None:
        return None if value is None else value.decode()

    def floats(self, pointer, count: int) -> np.ndarray:
        return np.ctypeslib.as_array(pointer, shape=(count,)).astype(np.float32, copy=True)

    def log_callback(self, handler):
        def call(level, text, _user) -> None:
            handler(int(level), (text or b"").decode(errors="replace"))

        return self.lib.llama_log_callback(call)

    def clear_cache(self, ctx) -> None:
        # llama.cpp replaced llama_kv_self_clear with the memory API in mid-2025
        self.lib.llama_memory_clear(self.lib.llama_get_memory(ctx), True)

    def set_adapter(self, ctx, adapter, scale: float) -> int:
        adapters = (self.lib.llama_adapter_lora_p_ctypes * 1)(adapter)
        scales = (ctypes.c_float * 1)(scale)
        return self.lib.llama_set_adapters_lora(ctx, adapters, 1, scales)


def load_python_binding() -> CtypesBinding:
    """llama-cpp-python's C API module without running its package `__init__`."""
    module_path = python_binding_module()
    if module_path is None:
        raise ImportError("llama-cpp-python is not installed")
    package_dir = module_path.parent
    if "llama_cpp" not in sys.modules:  # a bare package object, so that its submodules import
        spec = importlib.util.spec_from_file_location("llama_cpp", package_dir / "__init__.py",
                                                      submodule_search_locations=[str(package_dir)])
        sys.modules["llama_cpp"] = importlib.util.module_from_spec(spec)
    return CtypesBinding(importlib.import_module("llama_cpp.llama_cpp"))
