"""The vision evidence's data generator: the same files for the same seed, every answer one of the
question's answers, held-out renderings that no training image repeats, and records tunery reads."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from tunery.vision.records import load_vision_examples

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "vision" / "make_shapes.py"
ANSWERS = {"shape": {"circle", "square", "triangle"}, "colour": {"red", "green", "blue", "yellow"},
           "count": {"1", "2", "3"}, "digit": {str(d) for d in range(10)}}


def _module():
    spec = importlib.util.spec_from_file_location("make_shapes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "images").iterdir())}


def test_generator_is_reproducible_and_held_out_is_new(tmp_path):
    make = _module()
    for folder in (tmp_path / "a", tmp_path / "b"):
        (folder / "images").mkdir(parents=True)
        train = make.make_split(folder, "train", 24, 0)
        heldout = make.make_split(folder, "heldout", 12, 0)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    digests = _digests(tmp_path / "a")
    trained = {v for k, v in digests.items() if k.startswith("train")}
    assert not trained & {v for k, v in digests.items() if k.startswith("heldout")}
    for record in train + heldout:
        assert record["messages"][-1]["content"] in ANSWERS[record["kind"]]
    assert {r["kind"] for r in heldout} == set(ANSWERS)
    examples, problems = load_vision_examples([str(tmp_path / "a" / "heldout.jsonl")])
    assert problems == [] and len(examples) == 12 and all(len(e.images) == 1 for e in examples)
    assert json.loads((tmp_path / "a" / "train.jsonl").read_text().splitlines()[0])["kind"] == "shape"


def _ink(image):
    """Pixels far from the near-grey background (the shapes' or digit's), as a set of (x, y)."""
    pixels = image.convert("RGB").load()
    return {(x, y) for x in range(image.width) for y in range(image.height)
            if max(pixels[x, y]) - min(pixels[x, y]) > 90}


def _blobs(points: set) -> int:
    """Connected groups of `points` (4-neighbours)."""
    left, count = set(points), 0
    while left:
        count += 1
        stack = [left.pop()]
        while stack:
            x, y = stack.pop()
            for near in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                if near in left:
                    left.remove(near)
                    stack.append(near)
    return count


def test_pixels_say_what_the_answers_say(tmp_path):
    """The rendered pixels against the answers: a colour answer is the nearest named colour to the ink's
    mean, a count answer is the number of separate shapes, a digit image has ink."""
    from PIL import Image

    make = _module()
    (tmp_path / "images").mkdir()
    records = make.make_split(tmp_path, "train", 48, 0)
    for record in records:
        image = Image.open(tmp_path / record["messages"][1]["content"][0]["path"])
        ink = _ink(image)
        assert ink, record
        answer = record["messages"][-1]["content"]
        if record["kind"] == "colour":
            pixels = image.convert("RGB").load()
            mean = [sum(pixels[p][c] for p in ink) / len(ink) for c in range(3)]
            nearest = min(make.COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(make.COLOURS[name], mean)))
            assert nearest == answer, record
        if record["kind"] == "count":
            assert str(_blobs(ink)) == answer, record
