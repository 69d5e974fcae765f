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


def prefixed_rows(seed: int = 11) -> list[Row]:
    """Rows as a task's chat examples are: three with one 20-token system prompt, two with another
    that train from their first own token (the prefix's last position predicts a trained token of each),
    one row alone, and two conversations sharing a system prompt and a first exchange whose answer is
    trained, inside the 38 tokens they share."""
    rng = random.Random(seed)
    prompt_a = [rng.randrange(3, 400) for _ in range(20)]
    prompt_b = [rng.randrange(3, 400) for _ in range(24)]
    prompt_c = [rng.randrange(3, 400) for _ in range(20)]
    turn = [rng.randrange(3, 400) for _ in range(18)]

    def row(prefix, own, answer_from, trained_prefix=()):
        ids = prefix + [rng.randrange(3, 400) for _ in range(own)]
        return Row(ids, [i >= answer_from or i in trained_prefix for i in range(len(ids))])

    return [
        row(prompt_a, 9, 24), row(prompt_b, 6, 24), row(prompt_a, 12, 26), row([5, 6, 7], 10, 8),
        row(prompt_a, 5, 22), row(prompt_b, 8, 24),  # prompt_b's rows train from their first own token
        row(prompt_c + turn, 7, 40, trained_prefix=range(30, 38)),  # an earlier answer inside the prefix
        row(prompt_c + turn, 4, 40, trained_prefix=range(30, 38)),
    ]


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


def straight_and_resumed(make_loop_fn, folder, stop_after: int):
    """Train one loop to the end in `folder/a`; train another in `folder/b`, interrupt it after
    `stop_after` steps, and resume a third (a new process, as it were: a fresh loop and a scrambled RNG)
    from the newest checkpoint to the end. Returns (uninterrupted, resumed) loops and the resumed reason."""
    import torch

    from tunery.runfolder import RunFolder
    from tunery.trainers import checkpoint as ckpt
    from tunery.trainers import loop

    whole = make_loop_fn()
    loop.train(whole, RunFolder(folder / "a"), loop.LoopState(), lambda: False)
    calls = []
    st, reason = loop.train(make_loop_fn(), RunFolder(folder / "b"), loop.LoopState(),
                            lambda: len(calls.append(1) or calls) >= stop_after)
    assert (reason, st.step) == ("interrupted", stop_after)
    torch.manual_seed(12345)  # the resumed run must not depend on the RNG it starts with
    resumed = make_loop_fn()
    st = loop.resume(resumed, ckpt.latest_checkpoint(folder / "b" / "checkpoints"))
    _, reason = loop.train(resumed, RunFolder(folder / "b"), st, lambda: False)
    return whole, resumed, reason


def same_trainable_weights(a, b) -> bool:
    """Bitwise equal trainable weights of two loops."""
    import torch

    from tunery.models import adapters

    wa, wb = adapters.trainable_state(a.model), adapters.trainable_state(b.model)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
