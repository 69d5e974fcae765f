"""A tiny project for the gpu tier that needs nothing but the packages a bare GPU machine has: a
byte-level BPE tokenizer trained here (no embedded model, no hub), a random 2-layer Llama on it, and a
small chat dataset. Everything is device-agnostic; the tests assert that CUDA did the work."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from adapter_helpers import tiny_bpe_tokenizer
from cli_helpers import write_chat_jsonl
from conftest import make_tiny_model

STEPS = 6


def make_project(root: Path) -> Path:
    """root/tiny (model + tokenizer), train.jsonl, val.jsonl and run.yaml (LoRA, 6 steps); returns root."""
    from tunery.data.render import CHATML_TEMPLATE

    tokenizer = tiny_bpe_tokenizer(CHATML_TEMPLATE)
    model_dir = root / "tiny"
    make_tiny_model(len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    write_chat_jsonl(root / "train.jsonl", 32)
    write_chat_jsonl(root / "val.jsonl", 6, offset=100)
    (root / "run.yaml").write_text(yaml.safe_dump(settings(root)))
    return root


def settings(root: Path, **changes) -> dict:
    """The run's config as a dict; `changes` replace whole sections or top-level keys."""
    base = {
        "base_model": str(root / "tiny"),
        "data": {"train": [str(root / "train.jsonl")], "validation": [str(root / "val.jsonl")], "max_length": 64},
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.1},
        "training": {"max_steps": STEPS, "batch_size": 4, "lr": 1.0e-3, "eval_every": 3, "save_every": 1,
                     "keep_checkpoints": 10, "threads": 1},
    }
    return base | changes


def train_losses(run: Path) -> list[float | None]:
    import json

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [m["loss"] for m in lines if m["kind"] == "train"]


def cuda_peak_mb() -> float:
    return torch.cuda.max_memory_allocated() / 2**20
