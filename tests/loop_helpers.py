"""Helpers for loop tests: synthetic rendered rows and a config for the tiny model."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tunery.config.load import validate


@dataclass
class Row:
    ids: list[int]
    trained: list[bool]


def synthetic_rows(n: int, seed: int = 0, vocab: int = 400) -> list[Row]:
    """Rows of 6-20 tokens where the second half is trained (like a prompt and an answer)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        length = rng.randint(6, 20)
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        rows.append(Row(ids, [i >= length // 2 for i in range(length)]))
    return rows


def tiny_config(**training) -> object:
    data = {
        "base_model": "unused",
        "data": {"train": ["unused.jsonl"]},
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.1},
        "training": {"batch_size": 2, "max_steps": 6, "eval_every": 2, "warmup_ratio": 0.0,
                     "lr": 1e-2} | training,
    }
    return validate(data)


def make_loop(tokenizer, cfg, train, val=(), model=None, strategy=None):
    """The SFT method on the shared loop, over given rows (the tiny random model unless one is given)."""
    from conftest import make_tiny_model
    from tunery.data.render import Datasets
    from tunery.trainers.loop import setup
    from tunery.trainers.methods.sft import SFT

    model = model if model is not None else make_tiny_model(len(tokenizer))
    return setup(cfg, SFT(cfg, tokenizer), model, Datasets(list(train), list(val)), strategy)
