"""Peak memory and held-out loss: LoRA on the fp32 base against QLoRA (LoRA on a 4-bit NF4 base).

    python bench/qlora_memory.py [--steps 20] [--out bench/results/qlora_memory.json] [--load-only]

Both rows train the embedded SmolLM2-135M-Instruct with the same LoRA (r=16, alpha 32, all linear
layers), the same quickstart examples in the same order, the same learning rate and number of steps,
each in its own process, so that each row's peak resident memory (whole process: Python, torch,
tokenizer, data, model, optimizer, activations) is its own. The held-out loss is the validation loss
on examples/quickstart/heldout.jsonl (never trained on) after the last step, computed by the same
code for both rows; for QLoRA it is the loss of the 4-bit base plus the adapter, as it would serve.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "examples" / "quickstart"
ROWS = ("lora", "qlora")


def child(adapter: str, steps: int, workdir: Path) -> None:
    """Train one row in this process and print its figures as one JSON line."""
    from tunery.config.load import validate
    from tunery.trainers.run import run_training

    cfg = validate({
        "base_model": "smollm2-135m-instruct", "adapter": adapter,
        "lora": {"rank": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        "data": {"train": [str(QUICK / "train.jsonl")], "validation": [str(QUICK / "heldout.jsonl")],
                 "max_length": 256},
        "training": {"max_steps": steps, "batch_size": 8, "lr": 5e-4, "eval_every": steps, "seed": 42,
                     "warmup_ratio": 0.0},
        "output": {"dir": str(workdir), "name": adapter},
    })
    started = time.monotonic()
    info = run_training(cfg, workdir / adapter, log=lambda text: print(text, file=sys.stderr))
    print(json.dumps({
        "adapter": adapter, "steps": info.get("step"), "heldout_loss": info.get("best_val_loss"),
        "final_train_loss": info.get("final_loss"), "trained_tokens": info.get("trained_tokens"),
        "train_seconds": info.get("elapsed_s"), "wall_seconds": round(time.monotonic() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


def load_only(adapter: str) -> None:
    """Load the base as training would and print the resident memory then (peak and current)."""
    from tunery.config.load import validate
    from tunery.models.quant import load_for_training

    model = load_for_training(validate({"adapter": adapter, "data": {"train": ["unused.jsonl"]}}))
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    print(json.dumps({"adapter": adapter, "weights_mb": round(weights / 2**20, 1),
                      "rss_after_load_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1),
                      "peak_rss_during_load_mb": round(int(status["VmHWM"].split()[0]) / 1024, 1)}))


def run_row(adapter: str, steps: int, workdir: Path, mode: str = "--child") -> dict:
    proc = subprocess.run([sys.executable, __file__, mode, adapter, "--steps", str(steps),
                           "--workdir", str(workdir)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{adapter} row failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "qlora_memory.json")
    parser.add_argument("--child", choices=ROWS)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--load-child", choices=ROWS)
    parser.add_argument("--load-only", action="store_true", help="Only measure loading; add it to --out.")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.workdir)
        return
    if args.load_child:
        load_only(args.load_child)
        return
    loads = {adapter: run_row(adapter, args.steps, Path("."), "--load-child") for adapter in ROWS}
    if args.load_only:
        result = json.loads(args.out.read_text())
        for row in result["rows"]:
            row.update(loads[row["adapter"]])
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(loads, indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_row(adapter, args.steps, Path(tmp)) | loads[adapter] for adapter in ROWS]
    import bitsandbytes
    import torch

    result = {"steps": args.steps, "batch_size": 8, "torch": torch.__version__,
              "bitsandbytes": bitsandbytes.__version__, "threads": torch.get_num_threads(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'row':8} {'weights MB':>11} {'RSS after load':>15} {'peak RSS MB':>12} {'held-out loss':>14} {'train s':>8}")
    for row in rows:
        print(f"{row['adapter']:8} {row['weights_mb']:11.0f} {row['rss_after_load_mb']:15.0f} {row['peak_rss_mb']:12.0f} "
              f"{row['heldout_loss']:14.4f} {row['train_seconds']:8.0f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
