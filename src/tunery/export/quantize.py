"""GGUF types below 8 bits, made by llama.cpp's own quantizer (`llama_model_quantize`).

The k-quants (q4_k_m, q5_k_m, q6_k) are what most GGUF users download: super-blocks of 256 weights
with 6- or 8-bit sub-block scales, and for the `_m` mixes a few sensitive tensors (attention values,
the last feed-forward projections) kept one step higher. Writing them by hand would mean copying that
block code and the mix rules; llama.cpp is the reference implementation of both, and the
llama-cpp-cffi wheel exposes it, so tunery writes an f16 GGUF with its own writer and hands it to
llama.cpp's quantizer. Tensors whose rows are not a multiple of 256 (small test models) get llama.cpp's
own fallback type for them (q5_0, q5_1 or q8_0), as its `llama-quantize` does.

The quantizer runs in a child process (`python -m tunery.export.quantize`), like the reader, so that
native code never loads into the exporting process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tunery.errors import TuneryError

# tunery's name -> llama.cpp's LLAMA_FTYPE_* constant name, and bits per weight (llama.cpp's figures
# for a 7B model; small models come out larger, their 1-D tensors staying f32).
LLAMA_QUANT_TYPES = {
    "q4_k_m": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", 4.89),
    "q5_k_m": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", 5.70),
    "q6_k": ("LLAMA_FTYPE_MOSTLY_Q6_K", 6.56),
}
QUANTIZE_TIMEOUT_S = 1800


def quantize_isolated(source: Path, target: Path, file_type: str) -> None:
    """Quantize the GGUF `source` into `target` (written atomically) with llama.cpp, in a child process."""
    from tunery.atomic import atomic_file
    from tunery.export import llamacpp

    if llamacpp.find_extension() is None:
        raise TuneryError(f"--type {file_type} is made by llama.cpp's quantizer, which is not installed",
                          fix="pip install --no-deps llama-cpp-cffi==0.4.42, or use --type f16 or q8_0")
    import tunery

    package_root = str(Path(tunery.__file__).resolve().parents[1])
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    with atomic_file(target) as tmp:
        try:
            proc = subprocess.run([sys.executable, "-m", "tunery.export.quantize", str(source), str(tmp), file_type],
                                  env=env, capture_output=True, text=True, timeout=QUANTIZE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise TuneryError(f"llama.cpp's quantizer took longer than {QUANTIZE_TIMEOUT_S} s") from None
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            raise TuneryError(f"llama.cpp could not quantize to {file_type}",
                              why=lines[-1] if lines else f"exit code {proc.returncode}")


def _child(source: str, target: str, file_type: str) -> int:
    from tunery.export import llamacpp

    api = llamacpp.load_api()
    if api is None:
        print("llama-cpp-cffi is not installed", file=sys.stderr)
        return 1
    ffi, lib = api
    lib.llama_backend_init()
    params = ffi.new("struct llama_model_quantize_params *", lib.llama_model_quantize_default_params())
    params.ftype = getattr(lib, LLAMA_QUANT_TYPES[file_type][0])
    params.nthread = llamacpp.threads_wanted()
    code = lib.llama_model_quantize(source.encode(), target.encode(), params)
    if code != 0:
        print(f"llama_model_quantize returned {code}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:4]))
