"""Generate the image-text data of tunery's vision evidence: rendered shapes, colours, counts and digits,
with held-out renderings (new positions, sizes, shades and backgrounds drawn from another seed).

    python examples/vision/make_shapes.py OUT_DIR [--train 320] [--heldout 120] [--seed 0]

Writes OUT_DIR/images/*.png, OUT_DIR/train.jsonl and OUT_DIR/heldout.jsonl (chat records with an image
part, one short answer each), the same files for the same arguments. Four questions, in equal shares:
the shape (circle, square, triangle), its colour (red, green, blue, yellow), how many shapes (1-3), the
digit written (0-9). Chance is 1/3, 1/4, 1/3 and 1/10.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SIZE = 128
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (225, 200, 30)}
SYSTEM = "Answer with one word."
QUESTIONS = {"shape": "What shape is in the picture?", "colour": "What colour is the shape?",
             "count": "How many shapes are there? Answer with a digit.", "digit": "What digit is written?"}


def _shade(rgb, rng):
    return tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in rgb)


def _draw_shape(draw, shape, box, fill):
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _canvas(rng):
    from PIL import Image, ImageDraw

    grey = rng.randint(215, 255)
    image = Image.new("RGB", (SIZE, SIZE), (grey, grey, rng.randint(215, 255)))
    return image, ImageDraw.Draw(image)


def _boxes(rng, count):
    """`count` non-overlapping boxes, one per cell of a 2 x 2 grid, jittered inside it."""
    cells = rng.sample([(0, 0), (0, 1), (1, 0), (1, 1)], count) if count > 1 else [None]
    boxes = []
    for cell in cells:
        if cell is None:  # one shape: anywhere, any size
            side = rng.randint(36, 80)
            x, y = rng.randint(4, SIZE - side - 4), rng.randint(4, SIZE - side - 4)
        else:
            side = rng.randint(24, 44)
            x = cell[0] * 64 + rng.randint(2, 62 - side)
            y = cell[1] * 64 + rng.randint(2, 62 - side)
        boxes.append((x, y, x + side, y + side))
    return boxes


def render(kind: str, rng: random.Random):
    """(image, answer) for one question kind."""
    from PIL import ImageFont

    image, draw = _canvas(rng)
    shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    if kind == "digit":
        digit = str(rng.randint(0, 9))
        font = ImageFont.load_default(size=rng.randint(56, 84))
        draw.text((rng.randint(20, 60), rng.randint(0, 30)), digit, fill=_shade(COLOURS[colour], rng), font=font)
        return image, digit
    count = rng.randint(1, 3) if kind == "count" else 1
    for box in _boxes(rng, count):
        _draw_shape(draw, shape, box, _shade(COLOURS[colour], rng))
    return image, {"shape": shape, "colour": colour, "count": str(count)}[kind]


def make_split(folder: Path, name: str, count: int, seed: int) -> list[dict]:
    rng = random.Random(f"{name}-{seed}")
    kinds = list(QUESTIONS)
    records = []
    for index in range(count):
        kind = kinds[index % len(kinds)]
        image, answer = render(kind, rng)
        path = f"images/{name}-{index:04d}.png"
        image.save(folder / path)
        records.append({"kind": kind, "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": [{"type": "image", "path": path}, {"type": "text", "text": QUESTIONS[kind]}]},
            {"role": "assistant", "content": answer}]})
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=320)
    parser.add_argument("--heldout", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    make_split(args.out, "train", args.train, args.seed)
    make_split(args.out, "heldout", args.heldout, args.seed)
    print(f"wrote {args.train} training and {args.heldout} held-out records to {args.out}")


if __name__ == "__main__":
    main()
