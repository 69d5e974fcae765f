"""A finished run as the base model of another: `base_model: runs/cpt`.

The two-stage recipe (continued pre-training on domain text, then SFT on the task) starts the second
run from the first one's weights. A full fine-tuning run has them in `model/`. A LoRA run has an
adapter: its base with the adapter merged is written once to the cache (`~/.cache/tunery/models/
run-NAME-KEY/`, atomically, under a lock, like the embedded model's conversion), keyed by the adapter's
bytes and the base it was trained on, so training the first run again gives a new folder and never a
stale one. The run's own tokenizer (its chat template included) goes with it. The run folder itself is
only read. A QLoRA run's adapter was trained on 4-bit weights: merge it with `tunery merge` (which
takes care of that) and name the merged folder instead.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from tunery.atomic import atomic_dir, write_text_atomic
from tunery.errors import TuneryError
from tunery.models import embedded
from tunery.runfolder import read_run_info, unfinished_error

MERGED_FILES = ("adapter_config.json", "adapter_model.safetensors")


def run_model_dir(run: Path) -> Path:
    """A model folder holding a finished run's weights: its `model/`, or its base with the adapter merged."""
    info = read_run_info(run)
    kind = info.get("adapter", "lora")
    if kind == "full":
        if not (run / "model" / "config.json").is_file():
            raise unfinished_error(run, info, run / "model")
        return run / "model"
    if kind == "qlora":
        raise TuneryError(f"{run} is a QLoRA run: its adapter was trained on 4-bit weights",
                          fix=f"merge it first (tunery merge {run} --out merged/) and use base_model: merged/")
    if not all((run / "adapter" / name).is_file() for name in MERGED_FILES):
        raise unfinished_error(run, info, run / "adapter")
    target = embedded.cache_root() / "models" / f"run-{run.resolve().name}-{_key(run, info)}"
    with embedded.conversion_lock(target):
        if not (target / embedded.READY_MARKER).is_file():
            print(f"merging the adapter of {run} into {info['base_model']} once (cached in {target})",
                  file=sys.stderr, flush=True)
            _merge(run, info, target)
    return target


def _key(run: Path, info: dict) -> str:
    digest = hashlib.sha256(str(info["base_model"]).encode())
    for name in MERGED_FILES:
        digest.update((run / "adapter" / name).read_bytes())
    return digest.hexdigest()[:16]


def _merge(run: Path, info: dict, target: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from tunery.models.load import load_model

    with atomic_dir(target) as tmp:
        base = load_model(info["base_model"], "float32")  # itself a run, an alias, a folder or a hub id
        merged = PeftModel.from_pretrained(base, str(run / "adapter")).merge_and_unload()
        if any(not torch.isfinite(p).all() for p in merged.parameters()):
            raise TuneryError(f"the weights of {run} merged into its base hold NaN/inf; nothing was written")
        merged.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(run / "tokenizer").save_pretrained(tmp)
        write_text_atomic(tmp / embedded.READY_MARKER, f"merged from the run {run.resolve()}\n")
