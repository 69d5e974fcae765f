"""`tunery eval` on raw text: per-document losses over training's windows, ratio intervals, and a CPT run
scored against its base on held-out documents."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tunery.data.batching import make_batch
from tunery.data.render import Rendered, render_texts
from tunery.data.windows import split_windows
from tunery.eval.stats import bootstrap_ratio, paired_ratio_difference
from tunery.eval.text import document_losses, is_text_file


def test_document_losses_sum_every_window_of_every_document(tiny_model, smol_tokenizer):
    texts = ["A short note.", " ".join(f"part{i}" for i in range(90))]
    losses, counts = document_losses(tiny_model, smol_tokenizer, texts, max_length=32, batch_size=3)
    for text, loss, count in zip(texts, losses, counts):
        ids, trained = render_texts([text], smol_tokenizer)[0]
        assert count == len(ids) - 1  # every token after the first, once
        expected = 0.0
        for window in split_windows(Rendered(ids, trained, False, False), 32, 0):
            batch = make_batch([window], smol_tokenizer.pad_token_id, packed=False)
            with torch.no_grad():
                logits = tiny_model(input_ids=batch["input_ids"]).logits[0, :-1]
            targets = batch["labels"][0, 1:]
            keep = targets != -100
            expected += torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum").item()
        assert loss == pytest.approx(expected, rel=1e-5)


def test_the_ratio_interval_resamples_documents_and_the_paired_test_sees_a_shift():
    interval = bootstrap_ratio([2.0, 4.0, 6.0], [1, 2, 3], seed=0)
    assert interval.mean == 2.0 and interval.low == interval.high == 2.0  # every document at 2 per token
    p, diff = paired_ratio_difference([1.0] * 30, [1.0] * 30, [10] * 30)
    assert p == 1.0 and diff.mean == 0.0
    better = [9.0 + 0.1 * (i % 3) for i in range(30)]
    p, diff = paired_ratio_difference(better, [10.0] * 30, [10] * 30)
    assert diff.mean == pytest.approx(sum(b - 10.0 for b in better) / 300) and diff.high < 0 and p < 0.05


def write_texts(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return str(path)


def domain(i: int) -> str:
    return f"Pump model P{i} runs at {100 + i} litres per minute. Pump model P{i} needs a filter change every {i + 2} weeks."


def test_a_cpt_run_is_scored_against_its_base_on_held_out_text(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from tunery.cli.main import app
    from tunery.config.load import validate
    from tunery.trainers.run import run_training

    train = write_texts(tmp_path / "train.jsonl", [domain(i) for i in range(24)])
    heldout = write_texts(tmp_path / "heldout.jsonl", [domain(i) for i in range(100, 124)])
    assert is_text_file(heldout) and not is_text_file(str(tmp_path / "missing.jsonl"))
    cfg = validate({"base_model": str(tiny_model_dir), "method": "cpt", "data": {"train": [train], "max_length": 64},
                    "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
                    "training": {"batch_size": 4, "max_steps": 12, "warmup_ratio": 0.0, "lr": 2e-2,
                                 "preflight": False, "seed": 1}})
    run_training(cfg, tmp_path / "cpt", log=lambda _t: None)
    out = CliRunner().invoke(app, ["eval", str(tmp_path / "cpt"), "--data", heldout, "--probe", "none",
                                   "--max-length", "64", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["kind"] == "text" and result["n_examples"] == 24
    base, tuned = result["systems"]
    assert base["system"]["name"] == "base" and tuned["system"]["name"] == "tuned"
    assert base["tokens"] == tuned["tokens"] and tuned["loss"] < base["loss"] - 0.1
    assert tuned["ppl"] == pytest.approx(math.exp(tuned["loss"]))
    (test,) = result["comparisons"]
    assert test["diff"] == pytest.approx(tuned["loss"] - base["loss"]) and test["significant"] and test["diff_high"] < 0
    assert "held-out perplexity" in result["summary"] and "lower" in result["summary"]
    page = (tmp_path / "cpt" / "report.html").read_text()
    assert f'data-key="systems.1.ppl" data-value="{tuned["ppl"]!r}"' in page
