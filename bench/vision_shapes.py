"""Does the composed offline model learn to see? Held-out exact match of `smollm2-135m-vision` after a
projector-first run (LLaVA's recipe), against chance and against the same model with its untrained projector.

    OMP_NUM_THREADS=1 python bench/vision_shapes.py [--work DIR] [--train 320] [--heldout 120]
                                                    [--epochs 5] [--projector-epochs 4]
                                                    [--out bench/results/vision_shapes.json]

Generates the data (`examples/vision/make_shapes.py`: shapes, colours, counts, digits; held-out
renderings from another seed), trains with `tunery train` (method: vision, vision.train: projector, the
first `--projector-epochs` epochs the projector alone (`vision.projector_first_steps`), then projector +
LoRA; training.threads=1), then answers every held-out question greedily with the base model (untrained
projector), the run's checkpoint at the end of the projector stage, and the tuned run (its adapter loaded
with PEFT). Printed per question kind and overall: exact match with 95% bootstrap intervals, chance
(1 / number of answers) and the majority answer of the training set applied to every held-out question.
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
vision: {{train: projector, projector_first_steps: {first}}}
training: {{epochs: {epochs}, batch_size: 4, lr: 1.0e-3, threads: 1, eval_every: 100000, save_every: {first}, seed: 0}}
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


def load_trainable(model, path: Path) -> None:
    """Put a checkpoint's trainable weights (named as in the training's PEFT model) into `model`."""
    from safetensors.torch import load_file

    saved = load_file(path)
    missing = set(saved) - {name for name, _ in model.named_parameters()}
    if missing:
        raise KeyError(f"{path}: {len(missing)} weights the model does not have, e.g. {sorted(missing)[0]}")
    model.load_state_dict(saved, strict=False)


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
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--projector-epochs", type=int, default=4, help="epochs of the projector alone first")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "vision_shapes.json")
    args = parser.parse_args()
    work = args.work.resolve()
    (work / "images").mkdir(parents=True, exist_ok=True)
    train = make_shapes.make_split(work, "train", args.train, 0)
    heldout = make_shapes.make_split(work, "heldout", args.heldout, 0)
    steps_per_epoch = -(-len(train) // 4)  # batch 4
    first = args.projector_epochs * steps_per_epoch
    (work / "shapes.yaml").write_text(CONFIG.format(epochs=args.epochs, first=first))
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
    run = work / "runs" / "shapes"
    tuned = PeftModel.from_pretrained(base, run / "adapter").eval()
    predicted = answers(tuned, processor, heldout, work)
    hits["tuned"] = scores(heldout, predicted)
    stage = run / "checkpoints" / f"step-{first:07d}" / "trainable.safetensors"
    if stage.is_file():  # the end of the projector stage: the same model with that checkpoint's weights
        load_trainable(tuned, stage)
        hits["projector_stage"] = scores(heldout, answers(tuned, processor, heldout, work))
    majority = {k: Counter(normalise(r["messages"][-1]["content"]) for r in train if r["kind"] == k).most_common(1)[0][0]
                for k in CHANCE}
    result = {"train_examples": len(train), "heldout_examples": len(heldout), "epochs": args.epochs,
              "projector_first_steps": first, "steps": args.epochs * steps_per_epoch,
              "train_seconds": round(train_s, 1), "table": summary(heldout, hits, majority),
              "samples": [{"kind": r["kind"], "gold": r["messages"][-1]["content"], "tuned": p}
                          for r, p in list(zip(heldout, predicted))[:12]]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".partial.json")  # written whole, then renamed over the old figures
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.replace(args.out)
    rows = list(hits)
    print(f"{'kind':8} {'n':>4} {'chance':>7} {'majority':>9} " + " ".join(f"{m:>20}" for m in rows))
    for kind, row in result["table"].items():
        cells = [f"{row[m]['exact']:.2f} [{row[m]['ci95'][0]:.2f}, {row[m]['ci95'][1]:.2f}]" for m in rows]
        print(f"{kind:8} {row['n']:>4} {row['chance']:>7.2f} {row['majority']:>9.2f} " + " ".join(f"{c:>20}" for c in cells))
    print(f"training: {train_s:.0f} s; written {args.out}")


if __name__ == "__main__":
    main()
