"""The final save: a run's weights in the formats other tools load (PEFT adapter or HF model) and its tokenizer."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tunery.models import adapters
from tunery.runfolder import RunFolder
from tunery.trainers.common import assert_finite_state


def save_final(model, tokenizer, run: RunFolder, adapter_kind: str,
               state_dict: dict | None = None) -> Path:
    """Write `adapter/` (PEFT format) or `model/` (HF format) atomically, plus `tokenizer/`.

    `state_dict`: the model's full state dict when its parameters are sharded (gathered beforehand)."""
    target = run.model if adapter_kind == "full" else run.adapter
    weights = adapters.trainable_state(model) if state_dict is None else state_dict
    assert_finite_state(weights, "the final weights")
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    given = {} if state_dict is None else {"state_dict": state_dict}  # else save_pretrained reads the model
    model.save_pretrained(tmp, safe_serialization=True, **given)
    _replace_dir(tmp, target)
    tok_tmp = run.tokenizer.with_name(".tmp-tokenizer")
    shutil.rmtree(tok_tmp, ignore_errors=True)
    tokenizer.save_pretrained(tok_tmp)
    _replace_dir(tok_tmp, run.tokenizer)
    return target


def _replace_dir(tmp: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
