"""Does the composed offline model learn to see? Held-out exact match of `smollm2-135m-vision` after a
short projector + LoRA run, against chance and against the same model with its untrained projector.

    OMP_NUM_THREADS=1 python bench/vision_shapes.py [--work DIR] [--train 320] [--heldout 120]
                                                    [--epochs 2] [--out bench/results/vision_shapes.json]

Generates the data (`examples/vision/make_shapes.py`: shapes, colours, counts, digits; held-out
renderings from another seed), trains with `tunery train` (method: vision, vision.train: projector,
training.threads=1), then answers every held-out question greedily with the base model (untrained
projector) and the tuned one (its adapter loaded with PEFT). Printed per question kind and overall:
exact match with 95% bootstrap intervals, chance (1 / number of answers) and the majority answer of
the training set applied to every held-out question.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples" / "vision"))
import make_shapes  # noqa: E402

CHANCE = {"shape": 1 / 3, "colour": 1 / 4, "count": 1 / 3, "digit": 1 / 10}
CONFIG = """method: vision
base_model: smollm2-135m-vision
data: {{train: [train.jsonl], max_length: 128}}
vision: {{train: projector}}
training: {{epochs: {epochs}, batch_size: 4, lr: 1.0e-3, threads: 1, eval_every: 100000, save_every: 50, seed: 0}}
output: {{dir: runs, name: shapes}}
"""


def normalise(text: str) -> str:
    return text.strip().strip(".!").strip().lower()


@torch.no_grad()
def answers(model, processor, records: list[dict], folder: Path) -> list[str]:
    from tunery.vision.records import to_vision_example
    from tunery.vision.render import load_images, template_text

    out = []
    for index, record in enumerate(records):
        example, problems = to_vision_example(str(folder / "heldout.jsonl"), index + 1, record)
        prompt = template_text(processor, example.messages[:-1], generation_prompt=True)
        inputs = processor(text=[prompt], images=[load_images(example)])
        ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        out.append(processor.tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def scores(records, predicted) -> list[int]:
    return [int(normalise(p) == normalise(r["messages"][-1]["content"])) for r, p in zip(records, predicted)]


def summary(records, hits_by_model: dict[str, list[int]], majority: dict[str, str]) -> dict:
    from tunery.eval.stats import bootstrap_ci

    kinds = sorted({r["kind"] for r in records})
    table = {}
    for kind in kinds + ["all"]:
        picked = [i for i, r in enumerate(records) if kind in ("all", r["kind"])]
        row = {"n": len(picked),
               "chance": sum(CHANCE[records[i]["kind"]] for i in picked) / len(picked),
               "majority": sum(normalise(records[i]["messages"][-1]["content"]) == majority[records[i]["kind"]]
                               for i in picked) / len(picked)}
        for name, hits in hits_by_model.items():
            ci = bootstrap_ci([hits[i] for i in picked])
            row[name] = {"exact": sum(hits[i] for i in picked) / len(picked), "ci95": [ci.low, ci.high]}
        table[kind] = row
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("vision-shapes"))
    parser.add_argument("--train", type=int, default=320)
    parser.add_argument("--heldout", type=int, default=120)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "vision_shapes.json")
    args = parser.parse_args()
    work = args.work.resolve()
    (work / "images").mkdir(parents=True, exist_ok=True)
    train = make_shapes.make_split(work, "train", args.train, 0)
    heldout = make_shapes.make_split(work, "heldout", args.heldout, 0)
    (work / "shapes.yaml").write_text(CONFIG.format(epochs=args.epochs))
    started = time.monotonic()
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "tunery.cli.main", "train", "shapes.yaml", "--overwrite"], cwd=work,
                   env=env, check=True)
    train_s = time.monotonic() - started
    from peft import PeftModel

    from tunery.vision.model import load_processor, load_vlm

    torch.set_num_threads(1)
    processor = load_processor("smollm2-135m-vision")
    base = load_vlm("smollm2-135m-vision")
    hits = {"untrained_projector": scores(heldout, answers(base, processor, heldout, work))}
    tuned = PeftModel.from_pretrained(base, work / "runs" / "shapes" / "adapter").eval()
    predicted = answers(tuned, processor, heldout, work)
    hits["tuned"] = scores(heldout, predicted)
    majority = {k: Counter(normalise(r["messages"][-1]["content"]) for r in train if r["kind"] == k).most_common(1)[0][0]
                for k in CHANCE}
    result = {"train_examples": len(train), "heldout_examples": len(heldout), "epochs": args.epochs,
              "train_seconds": round(train_s, 1), "table": summary(heldout, hits, majority),
              "samples": [{"kind": r["kind"], "gold": r["messages"][-1]["content"], "tuned": p}
                          for r, p in list(zip(heldout, predicted))[:12]]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'kind':8} {'n':>4} {'chance':>7} {'majority':>9} {'untrained':>20} {'tuned':>20}")
    for kind, row in result["table"].items():
        cells = [f"{row[m]['exact']:.2f} [{row[m]['ci95'][0]:.2f}, {row[m]['ci95'][1]:.2f}]"
                 for m in ("untrained_projector", "tuned")]
        print(f"{kind:8} {row['n']:>4} {row['chance']:>7.2f} {row['majority']:>9.2f} {cells[0]:>20} {cells[1]:>20}")
    print(f"training: {train_s:.0f} s; written {args.out}")


if __name__ == "__main__":
    main()
