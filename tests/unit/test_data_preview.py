"""`preview_examples`: the first examples rendered, with trained spans visibly marked."""

from __future__ import annotations

import pytest

from data_helpers import chat, write
from tunery.data.preview import ANSI_GREEN, mark_trained, preview_examples
from tunery.errors import TuneryError

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def test_preview_marks_the_trained_answer(tmp_path, smol_tokenizer):
    path = write(
        tmp_path / "t.jsonl",
        [chat("Capital of France?", "Paris."), "{broken", chat("Two?", "2"), chat("x", "y")],
    )
    previews = preview_examples(path, smol_tokenizer, n=2)
    assert [(p["source"], p["line"]) for p in previews] == [(path, 1), (path, 3)]
    first = previews[0]
    assert first["text"] == (
        SYSTEM
        + "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n[[Paris.<|im_end|>]]\n"
    )
    assert len(first["ids"]) == len(first["trained"]) == first["tokens"] == 38
    assert first["trained_tokens"] == 3 and first["truncated"] is False


def test_preview_respects_train_on_and_max_length(tmp_path, smol_tokenizer):
    two = {
        "messages": [
            {"role": "user", "content": "A?"},
            {"role": "assistant", "content": "B."},
            {"role": "user", "content": "C?"},
            {"role": "assistant", "content": "D."},
        ]
    }
    path = write(tmp_path / "t.jsonl", [two])
    text = preview_examples(path, smol_tokenizer, train_on="assistant")[0]["text"]
    assert text.count("[[") == 2 and "[[B.<|im_end|>]]" in text and "[[D.<|im_end|>]]" in text
    last = preview_examples(path, smol_tokenizer, train_on="last")[0]["text"]
    assert last.count("[[") == 1 and "[[D.<|im_end|>]]" in last
    everything = preview_examples(path, smol_tokenizer, train_on="all")[0]["text"]
    assert everything.startswith("[[" + SYSTEM) and everything.endswith("D.<|im_end|>\n]]")
    # The first question and answer take 36 tokens; the second turn is cut away.
    cut = preview_examples(path, smol_tokenizer, max_length=36)[0]
    assert cut["truncated"] and cut["answer_cut"] and cut["tokens"] == 36
    assert cut["text"].endswith("[[B.<|im_end|>]]\n")


def test_mark_trained_with_ansi_colours(smol_tokenizer):
    ids = smol_tokenizer("Hello world", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2
    assert (
        mark_trained(ids, [False, True], smol_tokenizer, ANSI_GREEN)
        == "Hello\x1b[1;32m world\x1b[0m"
    )


def test_preview_of_a_file_with_no_good_record_is_an_error(tmp_path, smol_tokenizer):
    path = write(
        tmp_path / "t.jsonl", ["{broken", {"messages": [{"role": "user", "content": "Q"}]}]
    )
    with pytest.raises(TuneryError) as info:
        preview_examples(path, smol_tokenizer)
    assert (
        f"{path}:1: invalid JSON" in info.value.what
        and f"{path}:2: no assistant message" in info.value.what
    )
