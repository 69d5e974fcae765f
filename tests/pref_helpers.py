"""Helpers for preference-method tests: small pair, feedback and prompt files, and configs for the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from tunery.config.load import validate


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def pair(i: int) -> dict:
    """A toy preference: the right sum is chosen, a wrong one rejected."""
    return {"prompt": f"What is {i} plus {i + 1}?", "chosen": f"{2 * i + 1}.", "rejected": f"{2 * i + 7}, I think."}


def pairs_file(folder: Path, n: int = 12, offset: int = 0, name: str = "pairs.jsonl") -> str:
    return write_jsonl(folder / name, [pair(i) for i in range(offset, offset + n)])


def pref_config(model_dir, train: str, method: str = "dpo", adapter: str = "lora", val: str | None = None,
                **sections) -> object:
    """A preference config for the tiny model: LoRA r4, a few steps, no preflight."""
    data = {"base_model": str(model_dir), "method": method, "adapter": adapter,
            "data": {"train": [train], "validation": [val] if val else [], "max_length": 64},
            "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
            "training": {"batch_size": 2, "max_steps": 4, "eval_every": 2, "warmup_ratio": 0.0, "lr": 5e-3,
                         "preflight": False, "seed": 3}}
    for key, value in sections.items():
        data[key] = data.get(key, {}) | value
    return validate(data)
