"""`tunery data check` on image records: every bad image and record by file:line, image-count mismatches
with the template's placeholders, lengths with images expanded; through the real CLI on a tiny folder."""

from __future__ import annotations

import base64
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from tunery.cli.main import app
from tunery.vision.lint import check_vision_files, is_vision_data
from vlm_helpers import save_tiny, tiny_llava, write_png

runner = CliRunner()


def record(image_part, text="What is it?", answer="A square."):
    return {"messages": [{"role": "user", "content": [image_part, {"type": "text", "text": text}]},
                         {"role": "assistant", "content": answer}]}


def bad_images(folder):
    """(file name -> the problem kind tunery must report for it)."""
    write_png(folder / "good.png")
    (folder / "text.png").write_text("not an image at all")
    write_png(folder / "whole.png", (10, 200, 30), (64, 64))
    whole = (folder / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    Image.new("1", (9000, 8000)).save(folder / "huge.png")  # 72 megapixels, a few kB on disk
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(folder / "moving.gif", save_all=True, append_images=frames[1:], duration=100)
    Image.new("RGB", (16, 16)).save(folder / "picture.ppm")
    return {"missing.png": "missing_image", "text.png": "unreadable_image", "truncated.png": "truncated_image",
            "huge.png": "oversized_image", "moving.gif": "animated_image", "picture.ppm": "unsupported_image"}


def write_file(folder, expected):
    records = [record({"type": "image", "path": "good.png"})]
    records += [record({"type": "image", "path": name}) for name in expected]
    records.append(record({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@not-base64"}}))
    records.append(record({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}))
    good = base64.b64encode((folder / "good.png").read_bytes()).decode()
    records.append(record({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{good}"}},
                          text="Compare with <image> please"))  # spells the placeholder: one image, two placeholders
    records.append({"messages": [{"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": [{"type": "image", "path": "good.png"}]}]})
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_every_bad_image_is_named_by_line(smol_tokenizer, tmp_path):
    expected = bad_images(tmp_path)
    path = write_file(tmp_path, expected)
    processor = tiny_llava(smol_tokenizer)[1]
    report = check_vision_files([str(path)], processor, max_length=512)
    found = {(p.line, p.kind) for p in report.errors}
    lines = {kind: line for line, kind in enumerate(expected.values(), start=2)}
    assert {(line, kind) for kind, line in lines.items()} <= found
    n = len(expected) + 2
    assert (n, "bad_data_url") in found and (n + 1, "remote_image") in found
    assert (n + 2, "image_count_mismatch") in found and (n + 3, "image_in_answer") in found
    assert not any(p.line == 1 for p in report.errors)  # the good record
    assert len(report.errors) == len(expected) + 4
    assert report.stats["train"]["records"] == n + 3 and report.stats["train"]["tokens_max"] > 0


def test_length_with_images_expanded(smol_tokenizer, tmp_path):
    write_png(tmp_path / "good.png")
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(record({"type": "image", "path": "good.png"}, answer="word " * 40)) + "\n")
    processor = tiny_llava(smol_tokenizer)[1]
    assert [p.kind for p in check_vision_files([str(path)], processor, max_length=40).warnings] == ["answer_cut"]
    assert [p.kind for p in check_vision_files([str(path)], processor, max_length=10).errors] == ["image_cut"]


def test_text_files_are_not_image_records(tmp_path):
    text = tmp_path / "chat.jsonl"
    text.write_text(json.dumps({"messages": [{"role": "user", "content": "an image of a cat"},
                                             {"role": "assistant", "content": "ok"}]}) + "\n")
    assert not is_vision_data([str(text)])


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_reports_file_and_line(smol_tokenizer, tmp_path, as_json):
    expected = bad_images(tmp_path)
    path = write_file(tmp_path, expected)
    folder = save_tiny("llava", smol_tokenizer, tmp_path / "model")
    result = runner.invoke(app, ["data", "check", str(path), "--model", str(folder)] + (["--json"] if as_json else []))
    assert result.exit_code == 1, result.output
    if as_json:
        report = json.loads(result.output)
        assert {e["kind"] for e in report["errors"]} >= set(expected.values()) | {"image_count_mismatch"}
    else:
        assert f"{path}:4: image 1: image data is truncated or corrupt" in result.output
        assert f"{path}:3: image 1: not an image any reader knows" in result.output
        assert f"{path}:5: image 1: image of 9000x8000 = 72,000,000 pixels is over the limit" in result.output
        assert "FAILED" in result.output
