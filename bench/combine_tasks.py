"""Does a combined adapter keep the tasks of its parts? Held-out loss per task, before and after combining.

    python bench/combine_tasks.py [--steps 30] [--out bench/results/combine_tasks.json]

Two LoRA adapters (r=16, all linear layers) are trained on the embedded SmolLM2-135M-Instruct, one
per task: A = the quickstart booking-to-JSON task (examples/quickstart), B = written-out addition
("What is 17 plus 25?" -> "42."), generated here with a fixed seed. They are then combined with
`tunery combine` (cat with weights 1,1; linear with 0.5,0.5; ties with density 0.5), and every
model is scored by the same code on both tasks' held-out examples: mean loss per trained token on all
40, and greedy answers to the first 20 graded by the task's grader (json_match for A, exact for B).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "examples" / "quickstart"


def write_addition(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        lines.append(json.dumps({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                                              {"role": "assistant", "content": f"{a + b}."}]}))
    path.write_text("\n".join(lines) + "\n")
    return path


def train(name: str, train_file: Path, steps: int, workdir: Path) -> Path:
    from tunery.config.load import validate
    from tunery.trainers.run import run_training

    cfg = validate({"base_model": "smollm2-135m-instruct", "adapter": "lora",
                    "lora": {"rank": 16, "alpha": 32, "target_modules": "all-linear"},
                    "data": {"train": [str(train_file)], "max_length": 256},
                    "training": {"max_steps": steps, "batch_size": 8, "lr": 5e-4, "seed": 42},
                    "output": {"dir": str(workdir), "name": name}})
    run_training(cfg, workdir / name, log=lambda _text: None)
    return workdir / name


def heldout_loss(model, tokenizer, data_file: Path) -> float:
    """Mean loss per trained token on a file, rendered with the run's chat template."""
    from tunery.config.load import validate
    from tunery.data.dataset import build_datasets
    from tunery.models.forward import mean_loss

    cfg = validate({"data": {"train": [str(data_file)], "max_length": 256}})
    rows = build_datasets(cfg, tokenizer).train
    return mean_loss(model, rows, tokenizer.pad_token_id)[0]


def answer_score(model, tokenizer, data_file: Path, grader_spec: str, n: int = 20) -> float:
    """Share of the first n examples whose greedy answer passes the grader."""
    from tunery.eval.items import read_eval_items
    from tunery.graders import parse_graders
    from tunery.inference import generate_batch

    items = read_eval_items(str(data_file))[:n]
    grader = parse_graders([grader_spec])[0]
    answers = generate_batch(model, tokenizer, [i.prompt for i in items], max_new_tokens=40)
    return sum(grader.score(a, i.reference) for a, i in zip(answers, items)) / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "combine_tasks.json")
    args = parser.parse_args()
    from tunery.export.combine import combine_runs
    from tunery.inference import load_for_inference

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        add_train, add_heldout = write_addition(work / "add.jsonl", 240, 1), write_addition(work / "add-h.jsonl", 40, 2)
        heldout = {"A booking->JSON": QUICK / "heldout.jsonl", "B addition": add_heldout}
        graders = {"A booking->JSON": "json_match", "B addition": "exact"}
        runs = {"A": train("A", QUICK / "train.jsonl", args.steps, work), "B": train("B", add_train, args.steps, work)}
        combos = {"cat 1,1": ("cat", [1.0, 1.0], None), "linear .5,.5": ("linear", [0.5, 0.5], None),
                  "ties 1,1 d=.5": ("ties", [1.0, 1.0], 0.5)}
        for name, (method, weights, density) in combos.items():
            runs[name] = combine_runs([runs["A"], runs["B"]], method, work / name.replace(" ", "_"),
                                      weights=weights, density=density, log=lambda _text: None)
            runs[name] = work / name.replace(" ", "_")
        table = {"base": "smollm2-135m-instruct", **{k: str(v) for k, v in runs.items()}}
        rows = {}
        for name, target in table.items():
            model, tokenizer = load_for_inference(target)
            rows[name] = {task: {"loss": round(heldout_loss(model, tokenizer, path), 4),
                                 graders[task]: answer_score(model, tokenizer, path, graders[task])}
                          for task, path in heldout.items()}
            print(name, rows[name], flush=True)
    result = {"steps": args.steps, "batch_size": 8, "lr": 5e-4, "heldout": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
