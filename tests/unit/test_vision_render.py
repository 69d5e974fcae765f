"""Vision records rendered by each family's own processor: only assistant tokens are trained (no image
token, no prompt token), on tiny random-weight LLaVA, Idefics3 and Qwen2-VL built in the test."""

from __future__ import annotations

import base64
import json

import pytest
import torch

from tunery.errors import TuneryError
from tunery.vision.records import load_vision_examples
from tunery.vision.render import collate_vision, image_token_ids, render_vision
from vlm_helpers import FAMILIES, write_png

FAMILY_NAMES = sorted(FAMILIES)


@pytest.fixture(scope="module")
def processors(smol_tokenizer):
    return {name: make(smol_tokenizer)[1] for name, make in FAMILIES.items()}


def _records(tmp_path):
    write_png(tmp_path / "red.png", (220, 20, 20), (40, 48))
    buffer = tmp_path / "blue.png"
    write_png(buffer, (20, 20, 220), (30, 30))
    url = "data:image/png;base64," + base64.b64encode(buffer.read_bytes()).decode()
    records = [
        {"messages": [{"role": "user", "content": [{"type": "image", "path": "red.png"},
                                                    {"type": "text", "text": "What colour is it?"}]},
                      {"role": "assistant", "content": "Red, mostly."}]},
        {"messages": [{"role": "system", "content": "Answer briefly."},
                      {"role": "user", "content": [{"type": "text", "text": "And this?"},
                                                   {"type": "image_url", "image_url": {"url": url}}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "Blue"}]},
                      {"role": "user", "content": "Sure?"},
                      {"role": "assistant", "content": "Yes, blue."}]},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _trained_text(processor, row):
    return processor.tokenizer.decode([t for t, m in zip(row.ids, row.trained) if m])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_only_answers_are_trained(family, processors, tmp_path):
    processor = processors[family]
    examples, problems = load_vision_examples([str(_records(tmp_path))])
    assert problems == [] and len(examples) == 2
    first, second = (render_vision(e, processor) for e in examples)
    assert _trained_text(processor, first) == "Red, mostly.<|im_end|>"
    assert _trained_text(processor, second) == "Blue<|im_end|>Yes, blue.<|im_end|>"
    images = image_token_ids(processor)
    for row in (first, second):
        assert any(t in images for t in row.ids)  # the image did expand into tokens...
        assert not any(m and t in images for t, m in zip(row.ids, row.trained))  # ...none of them trained
    # The golden mask: every trained token lies inside an answer, the prompt (with the image) is not.
    first_answer = first.trained.index(True)
    assert not any(first.trained[:first_answer])
    assert processor.tokenizer.decode(first.ids[:first_answer]).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_batch_carries_images_and_labels(family, processors, tmp_path):
    processor = processors[family]
    examples, _ = load_vision_examples([str(_records(tmp_path))])
    rows = [render_vision(e, processor) for e in examples]
    batch = collate_vision(rows, processor)
    assert batch["input_ids"].shape == (2, max(len(r.ids) for r in rows))
    assert "pixel_values" in batch
    labels = batch["labels"]
    assert int((labels != -100).sum()) == sum(r.num_trained for r in rows)
    assert labels[0, len(rows[0].ids):].eq(-100).all()


def test_weight_zero_and_last(processors, tmp_path):
    processor = processors["llava"]
    examples, _ = load_vision_examples([str(_records(tmp_path))])
    last = render_vision(examples[1], processor, train_on="last")
    assert _trained_text(processor, last) == "Yes, blue.<|im_end|>"


def test_cut_through_an_image_is_refused(processors, tmp_path):
    processor = processors["idefics3"]
    examples, _ = load_vision_examples([str(_records(tmp_path))])
    with pytest.raises(TuneryError, match="cut through an image"):
        render_vision(examples[0], processor, max_length=12)
    whole = render_vision(examples[0], processor)
    cut = render_vision(examples[0], processor, max_length=len(whole.ids) - 2)
    assert cut.truncated and cut.answer_cut and len(cut.ids) == len(whole.ids) - 2


def test_captions_table(processors, tmp_path):
    write_png(tmp_path / "a.png")
    (tmp_path / "captions.csv").write_text("image,caption\na.png,A red square.\nmissing.png,\n")
    examples, problems = load_vision_examples([str(tmp_path / "captions.csv")])
    assert [(p.line, p.kind) for p in problems] == [(3, "empty_content")]
    row = render_vision(examples[0], processors["llava"])
    assert _trained_text(processors["llava"], row) == "A red square.<|im_end|>"
    assert "Describe the image." in row.text
