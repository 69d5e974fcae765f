"""The final save: a run's weights in the formats other tools load (PEFT adapter or HF model) and its tokenizer."""

from __future__ import annotations

from pathlib import Path

from tunery.atomic import atomic_dir
from tunery.models import adapters
from tunery.runfolder import RunFolder
from tunery.trainers.common import assert_finite_state


def save_final(model, tokenizer, run: RunFolder, adapter_kind: str,
               state_dict: dict | None = None) -> Path:
    """Write `adapter/` (PEFT format) or `model/` (HF format) atomically, plus `tokenizer/`; both are
    on disk (fsynced) when this returns, before run.json may say "finished".

    `state_dict`: the model's full state dict when its parameters are sharded (gathered beforehand)."""
    target = run.model if adapter_kind == "full" else run.adapter
    weights = adapters.trainable_state(model) if state_dict is None else state_dict
    assert_finite_state(weights, "the final weights")
    given = {} if state_dict is None else {"state_dict": state_dict}  # else save_pretrained reads the model
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, **given)
    with atomic_dir(run.tokenizer) as tmp:
        tokenizer.save_pretrained(tmp)
    return target
