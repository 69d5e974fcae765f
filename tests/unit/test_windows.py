"""Long raw text as windows (`data.long_texts: split`): every token trained exactly once, documents kept
apart in packed batches, the counts `tunery data check` prints, and exact resume over windows."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tunery.config.schema import TrainConfig
from tunery.data.batching import make_batch
from tunery.data.dataset import build_datasets
from tunery.data.render import Rendered
from tunery.data.windows import count_windows, split_windows
from tunery.models.forward import forward_loss, next_token_targets


def trained_positions(windows: list[Rendered], starts: list[int]) -> list[int]:
    """Document positions that are next-token targets in some window (a window's first token never is)."""
    return [start + j for window, start in zip(windows, starts) for j in range(1, len(window.ids)) if window.trained[j]]


def starts_of(windows: list[Rendered], ids: list[int]) -> list[int]:
    """Where each window lies in the document (found by its tokens, which are unique here)."""
    return [ids.index(window.ids[0]) for window in windows]


def test_windows_train_every_token_of_a_document_exactly_once():
    rng = random.Random(0)
    for _ in range(400):
        n, length = rng.randint(1, 300), rng.randint(8, 64)
        overlap = rng.randint(0, length // 2)
        ids = list(range(1000, 1000 + n))  # unique tokens: a window's place is its first token
        windows = split_windows(Rendered(ids, [True] * n, False, False), length, overlap)
        starts = starts_of(windows, ids)
        assert all(len(w.ids) <= length for w in windows) and all(w.ids == ids[s:s + len(w.ids)] for w, s in zip(windows, starts))
        assert trained_positions(windows, starts) == list(range(1, n)), (n, length, overlap)
        assert len(windows) == count_windows([n], length, overlap, split=True).windows
        if n > length and overlap > 1:
            assert starts[1] == length - overlap  # the second window repeats `overlap` tokens as context


def test_an_untrained_token_stays_untrained_in_its_window():
    trained = [i % 3 != 0 for i in range(40)]
    windows = split_windows(Rendered(list(range(40)), trained, False, False), 16, 4)
    starts = starts_of(windows, list(range(40)))
    assert trained_positions(windows, starts) == [i for i in range(1, 40) if trained[i]]


def test_the_counts_data_check_prints():
    count = count_windows([5, 30, 100], 16, 0, split=True)
    assert (count.documents, count.longer, count.tokens, count.trained, count.dropped) == (3, 2, 135, 132, 0)
    assert count.windows == 1 + 2 + 7  # stride 15: 30 tokens -> starts 0, 15; 100 -> 0, 15, ..., 90
    cut = count_windows([5, 30, 100], 16, 0, split=False)
    assert (cut.windows, cut.trained, cut.dropped) == (3, 4 + 15 + 15, 14 + 84)


def write_corpus(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return str(path)


def test_training_data_holds_every_token_of_a_long_document(tmp_path, smol_tokenizer):
    text = " ".join(f"word{i}" for i in range(300))
    corpus = write_corpus(tmp_path / "c.jsonl", [text, "Short one."])
    cfg = TrainConfig(method="cpt", data={"train": [corpus], "max_length": 64, "window_overlap": 8})
    data = build_datasets(cfg, smol_tokenizer)
    full = smol_tokenizer(text)["input_ids"] + [smol_tokenizer.eos_token_id]
    windows = data.train[:-1]
    assert len(windows) == count_windows([len(full)], 64, 8, split=True).windows > 1
    targets = [w.ids[j] for w in windows for j in range(1, len(w.ids)) if w.trained[j]]
    assert targets == full[1:]  # the document's tokens in order, each once
    assert data.train[-1].ids == smol_tokenizer("Short one.")["input_ids"] + [smol_tokenizer.eos_token_id]
    assert data.warnings == ["1 raw text example(s) are longer than max_length 64: split into windows that "
                             "train every token once"]
    batch = make_batch(windows, smol_tokenizer.pad_token_id, packed=True)
    assert len(next_token_targets(batch["labels"])[1]) == len(full) - 1  # packing keeps them all


def test_packed_documents_do_not_see_each_other(tiny_model, smol_tokenizer):
    rng = random.Random(1)
    rows = [Rendered([rng.randrange(3, 400) for _ in range(n)], [True] * n, False, False) for n in (30, 17, 25)]
    with torch.no_grad():
        packed, count = forward_loss(tiny_model, make_batch(rows, 0, packed=True))
        alone = [forward_loss(tiny_model, make_batch([row], 0, packed=True)) for row in rows]
    assert count == sum(n for _, n in alone) == 29 + 16 + 24
    torch.testing.assert_close(packed, sum(loss for loss, _ in alone), rtol=1e-5, atol=1e-5)


def test_an_overlap_over_half_a_window_is_refused():
    with pytest.raises(ValueError, match=r"window_overlap \(40\) must be at most half of data.max_length \(64\)"):
        TrainConfig(data={"train": ["x.jsonl"], "max_length": 64, "window_overlap": 40})


def test_a_run_over_windows_resumes_bitwise(tmp_path, smol_tokenizer):
    from loop_helpers import make_loop, same_trainable_weights, straight_and_resumed, tiny_config

    text = " ".join(f"token{i}" for i in range(200))
    cfg = tiny_config(max_steps=6, save_every=100)
    cfg.method, cfg.data.train, cfg.data.max_length = "cpt", [write_corpus(tmp_path / "c.jsonl", [text] * 2)], 48
    data = build_datasets(cfg, smol_tokenizer)
    assert len(data.train) > 6  # two documents, several windows each
    whole, resumed, reason = straight_and_resumed(lambda: make_loop(smol_tokenizer, cfg, data.train), tmp_path, 3)
    assert reason == "finished" and same_trainable_weights(whole, resumed)


def test_data_check_reports_windows_and_tokens_used_and_dropped(tmp_path, smol_tokenizer):
    from typer.testing import CliRunner

    from tunery.cli.main import app

    text = " ".join(f"word{i}" for i in range(300))
    n = len(smol_tokenizer(text)["input_ids"]) + 1  # with EOS
    corpus = write_corpus(tmp_path / "c.jsonl", [text, "Short one."])
    short = len(smol_tokenizer("Short one.")["input_ids"]) + 1
    args = ["data", "check", corpus, "--method", "cpt", "--max-length", "64"]
    split = CliRunner().invoke(app, args)
    windows = count_windows([n], 64, 0, split=True).windows
    assert split.exit_code == 0, split.output
    assert (f"raw text: 2 documents, 1 longer than max_length (split into {windows + 1} windows); "
            f"{n - 1 + short - 1} tokens trained, 0 dropped") in split.output
    cut = CliRunner().invoke(app, args + ["--long-texts", "cut", "--json"])
    stats = json.loads(cut.stdout)["stats"]["train"]["windows"]
    assert stats["dropped_tokens"] == n - 64 and stats["windows"] == 2 and stats["trained_tokens"] == 63 + short - 1
    assert [w["kind"] for w in json.loads(cut.stdout)["warnings"]] == ["text_truncated"]
