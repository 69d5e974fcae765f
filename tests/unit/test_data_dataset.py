"""`build_datasets`: what the trainer gets from a config, and how it refuses broken data."""

from __future__ import annotations

import json

import pytest

from tunery.config.schema import TrainConfig
from tunery.data.dataset import build_datasets, split_validation
from tunery.data.messages import Example
from tunery.errors import TuneryError


def parts(data):
    return data.train, data.val, data.warnings


def chat(question, answer, weight=None):
    answer_msg = {"role": "assistant", "content": answer}
    if weight is not None:
        answer_msg["weight"] = weight
    return {"messages": [{"role": "user", "content": question}, answer_msg]}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def config(train, validation=(), **data):
    return TrainConfig(data={"train": list(train), "validation": list(validation), **data})


def test_train_and_validation_files(tmp_path, smol_tokenizer):
    train = write_jsonl(tmp_path / "t.jsonl", [chat(f"Q{i}", f"A{i}") for i in range(4)])
    val = write_jsonl(tmp_path / "v.jsonl", [chat("Qv", "Av")])
    tr, va, warnings = parts(build_datasets(config([train], [val]), smol_tokenizer))
    assert len(tr) == 4 and len(va) == 1 and warnings == []
    decoded = smol_tokenizer.decode(
        [i for i, on in zip(tr[2].ids, tr[2].trained) if on], skip_special_tokens=False
    )
    assert decoded == "A2<|im_end|>"


def test_every_problem_of_every_file_in_one_error(tmp_path, smol_tokenizer):
    train = tmp_path / "t.jsonl"
    train.write_text(
        json.dumps(chat("Q", "A"))
        + "\n"
        + "{oops\n"
        + json.dumps({"messages": [{"role": "user", "content": "Q"}]})
        + "\n",
        encoding="utf-8",
    )
    val = write_jsonl(tmp_path / "v.jsonl", [{"messages": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(TuneryError) as info:
        build_datasets(config([str(train)], [val]), smol_tokenizer)
    message = info.value.what
    assert message.startswith("3 problems in the data")
    assert f"{train}:2: invalid JSON" in message
    assert f"{train}:3: no assistant message" in message
    assert f"{val}:1: messages[0]: unknown role 'robot'" in message
    assert "tunery data check" in info.value.fix


def test_sft_refuses_raw_text_and_cpt_trains_every_token(tmp_path, smol_tokenizer):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "Alpha beta."}, {"text": "Gamma."}])
    with pytest.raises(TuneryError, match=r"c.jsonl:1: raw text record, but method sft"):
        build_datasets(config([corpus]), smol_tokenizer)
    cfg = config([corpus])
    cfg.method = "cpt"
    tr, va, _ = parts(build_datasets(cfg, smol_tokenizer))
    assert tr[0].ids == smol_tokenizer("Alpha beta.")["input_ids"] + [smol_tokenizer.eos_token_id]
    assert all(all(r.trained) for r in tr) and va == []
    cfg.data.max_length, cfg.data.long_texts = 8, "cut"
    long_text = write_jsonl(tmp_path / "l.jsonl", [{"text": " ".join(["word"] * 20)}, {"text": "Gamma."}])
    cfg.data.train = [long_text]
    tr, _, warnings = parts(build_datasets(cfg, smol_tokenizer))
    assert [len(r.ids) for r in tr] == [8, 4] and tr[0].answer_cut  # "Gamma." is 3 tokens + EOS
    assert warnings == [
        "1 raw text example(s) are longer than max_length 8; only their first max_length tokens "
        "are trained (data.long_texts: split keeps the rest)"
    ]


def test_cpt_trains_conversations_in_full(tmp_path, smol_tokenizer):
    train = write_jsonl(tmp_path / "t.jsonl", [chat("Q", "A")])
    cfg = config([train], train_on="assistant")
    cfg.method = "cpt"
    tr, _, _ = parts(build_datasets(cfg, smol_tokenizer))
    assert all(tr[0].trained)


def test_dropped_examples_are_warned_about(tmp_path, smol_tokenizer):
    long_answer = " ".join(["word"] * 80)
    train = write_jsonl(
        tmp_path / "t.jsonl",
        [
            chat("Q", "A"),
            chat("Q2", "no", weight=0),
            chat("Q3", long_answer),
        ],
    )
    # 40 tokens hold the default system prompt, the question and a few answer tokens.
    tr, _, warnings = parts(build_datasets(config([train], max_length=40), smol_tokenizer))
    assert len(tr) == 2
    assert warnings == [
        f"{train}:2: dropped: it has no trained token (every assistant turn has weight 0?)",
        f"{train}:3: cut at max_length 40: part of the answer is lost",
    ]
    assert tr[1].truncated and tr[1].answer_cut and len(tr[1].ids) == 40


def test_nothing_left_is_an_error(tmp_path, smol_tokenizer):
    train = write_jsonl(tmp_path / "t.jsonl", [chat("Q", "A")])
    with pytest.raises(TuneryError, match="no training example is left") as info:
        build_datasets(config([train], max_length=10), smol_tokenizer)
    assert "every trained token lies beyond max_length 10" in info.value.why


def test_validation_examples_come_with_their_rendered_rows(tmp_path, smol_tokenizer):
    train = write_jsonl(tmp_path / "t.jsonl", [chat(f"Q{i}", f"A{i}") for i in range(10)])
    data = build_datasets(config([train], val_split=0.2), smol_tokenizer)
    assert [e.messages[-1].content for e in data.val_examples] == [
        smol_tokenizer.decode([t for t, m in zip(r.ids, r.trained) if m]).removesuffix("<|im_end|>")
        for r in data.val]


def test_val_split_is_deterministic_and_seeded(tmp_path, smol_tokenizer):
    train = write_jsonl(tmp_path / "t.jsonl", [chat(f"Q{i}", f"A{i}") for i in range(20)])
    cfg = config([train], val_split=0.2)
    first = build_datasets(cfg, smol_tokenizer)
    again = build_datasets(cfg, smol_tokenizer)
    assert len(first.train) == 16 and len(first.val) == 4
    assert [r.ids for r in first.val] == [r.ids for r in again.val]
    cfg.training.seed = 7
    other = build_datasets(cfg, smol_tokenizer)
    assert [r.ids for r in other.val] != [r.ids for r in first.val]
    # Nothing is lost or duplicated by the split.
    all_ids = sorted(tuple(r.ids) for r in first.train + first.val)
    assert all_ids == sorted(
        tuple(r.ids) for r in build_datasets(config([train]), smol_tokenizer).train
    )


def test_split_validation_pins_the_torch_generator():
    examples = [Example("f", i + 1, text=str(i)) for i in range(10)]
    train, held = split_validation(examples, 0.3, seed=42)
    # torch.randperm(10) seeded with 42 starts 2, 6, 1: those indices, kept in file order.
    assert [e.line for e in held] == [2, 3, 7]
    assert [e.line for e in train] == [1, 4, 5, 6, 8, 9, 10]
    assert split_validation(examples[:1], 0.3, seed=42) == (examples[:1], [])
    assert len(split_validation(examples[:2], 0.01, seed=0)[1]) == 1


def test_validation_files_win_over_val_split_and_overlap_warns(tmp_path, smol_tokenizer):
    train = write_jsonl(tmp_path / "t.jsonl", [chat("Q", "A"), chat("Q2", "A2")])
    val = write_jsonl(tmp_path / "v.jsonl", [chat("Q2", "A2")])
    tr, va, warnings = parts(build_datasets(config([train], [val], val_split=0.2), smol_tokenizer))
    assert len(tr) == 2 and len(va) == 1
    assert warnings[0] == "data.val_split is ignored because validation files are given"
    assert warnings[1].startswith(
        f"1 validation example(s) also appear in the training data (first: {val}:1)"
    )
