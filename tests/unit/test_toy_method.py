"""A method defined here, in a few lines, trains through the shared loop: checkpoints, exact resume,
its own figures in the metrics, and early stopping with the best weights kept. Nothing of the loop
knows about it."""

from __future__ import annotations

import torch

from conftest import make_tiny_model
from loop_helpers import synthetic_rows, tiny_config
from tunery.data.batching import collate
from tunery.data.render import Datasets
from tunery.models import adapters
from tunery.runfolder import RunFolder
from tunery.trainers import checkpoint as ckpt
from tunery.trainers import loop
from tunery.trainers.method import LossOut, Method


class LastToken(Method):
    """Toy: predict each row's last token from the one before it; the unit is a row."""

    name, unit, figures = "last_token", "rows", ("correct",)

    def pieces(self, rows):
        return [rows]

    def collate(self, rows):
        return collate(rows, pad_id=2)

    def units(self, batch):
        return int(batch["input_ids"].shape[0])

    def loss(self, model, batch, logits_at):
        last = batch["attention_mask"].sum(1) - 1
        positions = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        positions[torch.arange(len(last)), last - 1] = True
        logits = logits_at(model, batch, positions)
        targets = batch["input_ids"][torch.arange(len(last)), last]
        total = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        return LossOut(total, len(last), {"correct": float((logits.argmax(-1) == targets).sum())})


def toy_loop(tok, cfg):
    data = Datasets(synthetic_rows(10), synthetic_rows(4, seed=1))
    return loop.setup(cfg, LastToken(cfg, tok), make_tiny_model(len(tok)), data)


def run(s, root, stop_after=None, state=None):
    calls = []
    return loop.train(s, RunFolder(root), state or loop.LoopState(),
                      lambda: stop_after is not None and (calls.append(1) or len(calls)) >= stop_after)


def test_a_toy_method_trains_checkpoints_and_resumes_bitwise(smol_tokenizer, tmp_path):
    cfg = tiny_config(max_steps=6, eval_every=2, save_every=100)
    whole = toy_loop(smol_tokenizer, cfg)
    st, reason = run(whole, tmp_path / "a")
    assert (reason, st.step, st.trained_tokens) == ("finished", 6, 12)  # 6 steps x 2 rows
    metrics = RunFolder(tmp_path / "a").read_metrics()
    train = [m for m in metrics if m["kind"] == "train"]
    assert [m["trained_rows"] for m in train] == [2] * 6 and all(0 <= m["correct"] <= 1 for m in train)
    evals = [m for m in metrics if m["kind"] == "eval"]
    assert [m["step"] for m in evals] == [2, 4, 6] and all("val_correct" in m for m in evals)

    first = toy_loop(smol_tokenizer, cfg)
    st, reason = run(first, tmp_path / "b", stop_after=3)
    assert (reason, st.step) == ("interrupted", 3)
    torch.manual_seed(999)  # the resumed run must not depend on the RNG it starts with
    second = toy_loop(smol_tokenizer, cfg)
    state = loop.resume(second, ckpt.latest_checkpoint(tmp_path / "b" / "checkpoints"))
    st, reason = run(second, tmp_path / "b", state=state)
    assert (reason, st.step) == ("finished", 6)
    a, b = adapters.trainable_state(whole.model), adapters.trainable_state(second.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_toy_method_stops_early_and_keeps_its_best_weights(smol_tokenizer, tmp_path):
    cfg = tiny_config(max_steps=40, eval_every=1, early_stopping_patience=2, lr=0.5, keep_checkpoints=1)
    s = toy_loop(smol_tokenizer, cfg)
    st, reason = run(s, tmp_path)
    assert reason == "early_stopped" and st.step == st.best_step + 2 < 40
    loop.restore_best(s, RunFolder(tmp_path), st)
    assert loop.evaluate(s)[0] == st.best_val
