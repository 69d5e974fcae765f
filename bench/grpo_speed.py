"""Online RL speed and memory: tunery's `method: rl` (GRPO) against TRL's GRPOTrainer + PEFT.

    python bench/grpo_speed.py [--steps 8] [--out bench/results/grpo_speed.json]

Every row trains LoRA r=16 (alpha 32, dropout 0.05) on all linear layers of the embedded
SmolLM2-135M-Instruct with GRPO on the same arithmetic prompts (our own generator below): 2 prompts a
step, 4 sampled answers each (temperature 1, at most 24 new tokens), reward 1 when the answer's last
number is right (the `numeric` grader), no KL term, learning rate 1e-5, TRL's default loss ("dapo",
which tunery's token sum over the step is). Each row runs in its own process (its peak memory is its
own). Afterwards every row's adapter answers the same 32 held-out prompts greedily, scored by the same
code.

Rows:
  trl-default   GRPOConfig defaults on a CPU (fp32 via bf16=False, gradient checkpointing on)
  trl-best      the same without gradient checkpointing
  tunery        tunery's defaults for method: rl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = "smollm2-135m-instruct"
SETTINGS = dict(prompts_per_step=2, group=4, max_new_tokens=24, temperature=1.0, lr=1e-5, rank=16, alpha=32,
                dropout=0.05, seed=0)
ROWS = ["trl-default", "trl-best", "tunery"]


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_prompts(path: Path, n: int, seed: int) -> Path:
    """Word problems of two small numbers, with the number that answers them."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        lines.append(json.dumps({"prompt": f"Sam has {a} marbles and wins {b} more. How many marbles does Sam "
                                           "have now? Answer with the number.", "answer": str(a + b)}))
    path.write_text("\n".join(lines) + "\n")
    return path


def run_tunery_row(train: Path, steps: int, out: Path) -> dict:
    from tunery.config.load import validate
    from tunery.trainers.run import run_training

    s = SETTINGS
    cfg = validate({
        "base_model": MODEL, "method": "rl", "data": {"train": [str(train)]},
        "lora": {"rank": s["rank"], "alpha": s["alpha"], "dropout": s["dropout"]},
        "rl": {"graders": ["numeric"], "group_size": s["group"], "max_new_tokens": s["max_new_tokens"],
               "temperature": s["temperature"], "log_completions": 0},
        "training": {"max_steps": steps, "batch_size": s["prompts_per_step"], "lr": s["lr"], "warmup_ratio": 0.0,
                     "seed": s["seed"], "save_every": steps, "eval_every": steps, "preflight": False}})
    start = time.perf_counter()
    info = run_training(cfg, out / "run", log=lambda _t: None)
    seconds = time.perf_counter() - start
    lines = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    rewards = [m["reward"] for m in lines if m["kind"] == "train"]
    return {"loop_s": seconds, "steps": info["step"], "adapter": str(out / "run" / "adapter"),
            "train_reward": sum(rewards) / len(rewards), "peak_rss_mb": peak_rss_mb()}


def run_trl_row(row: str, train: Path, steps: int, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from tunery.graders import parse_graders
    from tunery.models.load import load_model, load_tokenizer

    s = SETTINGS
    numeric = parse_graders(["numeric"])[0]
    records = [json.loads(x) for x in train.read_text().splitlines()]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
                              for r in records])

    def reward(completions, answer, **_kw):
        return [numeric.score(c[0]["content"], a) for c, a in zip(completions, answer)]

    rewards: list[float] = []
    options = dict(output_dir=str(out / "trl"), max_steps=steps, per_device_train_batch_size=s["prompts_per_step"] * s["group"],
                   num_generations=s["group"], max_completion_length=s["max_new_tokens"], temperature=s["temperature"],
                   learning_rate=s["lr"], lr_scheduler_type="cosine", warmup_steps=0, logging_steps=1,
                   save_strategy="no", report_to="none", seed=s["seed"], beta=0.0, bf16=False, use_cpu=True)
    if row == "trl-best":
        options |= dict(gradient_checkpointing=False)
    lora = LoraConfig(r=s["rank"], lora_alpha=s["alpha"], lora_dropout=s["dropout"], target_modules="all-linear",
                      task_type="CAUSAL_LM")
    from transformers import TrainerCallback

    class Keep(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                rewards.append(float(logs["reward"]))

    trainer = GRPOTrainer(model=load_model(MODEL, "float32"), reward_funcs=[reward], args=GRPOConfig(**options),
                          train_dataset=data, processing_class=load_tokenizer(MODEL), peft_config=lora,
                          callbacks=[Keep()])
    torch.manual_seed(s["seed"])
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.model.save_pretrained(out / "adapter")
    return {"loop_s": seconds, "steps": steps, "adapter": str(out / "adapter"),
            "train_reward": sum(rewards) / len(rewards) if rewards else None, "peak_rss_mb": peak_rss_mb()}


def heldout_reward(adapter: str, heldout: Path) -> dict:
    """Mean numeric reward of greedy answers to the held-out prompts, with a 95% bootstrap interval."""
    from peft import PeftModel

    from tunery.eval.stats import bootstrap_ci
    from tunery.graders import parse_graders
    from tunery.inference import generate_batch
    from tunery.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    base = load_model(MODEL)
    model = (PeftModel.from_pretrained(base, adapter) if adapter else base).eval()
    records = [json.loads(x) for x in heldout.read_text().splitlines()]
    answers = generate_batch(model, tokenizer, [[{"role": "user", "content": r["prompt"]}] for r in records],
                             max_new_tokens=SETTINGS["max_new_tokens"], batch_size=16)
    numeric = parse_graders(["numeric"])[0]
    scores = [numeric.score(a, r["answer"]) for a, r in zip(answers, records)]
    ci = bootstrap_ci(scores)
    return {"mean": sum(scores) / len(scores), "low": ci.low, "high": ci.high}


def child(row: str, workdir: Path, steps: int) -> None:
    out = workdir / row
    out.mkdir(parents=True, exist_ok=True)
    train = workdir / "train.jsonl"
    result = run_tunery_row(train, steps, out) if row == "tunery" else run_trl_row(row, train, steps, out)
    print("RESULT " + json.dumps(result), flush=True)


def run_child(row: str, workdir: Path, steps: int) -> dict:
    print(f"running {row} ({steps} steps) ...", flush=True)
    proc = subprocess.run([sys.executable, __file__, "--child", row, "--workdir", str(workdir), "--steps", str(steps)],
                          capture_output=True, text=True, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
    results = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        raise SystemExit(f"{row} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(results[-1][len("RESULT "):])


def fmt(value, spec=".2f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table(rows: list[dict]) -> str:
    head = (f"{'row':<13}{'steps':>6}{'answers/s':>11}{'peak MiB':>10}{'loop s':>9}{'train reward':>14}"
            f"{'held-out reward [95% CI]':>28}{'tunery x':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        held = r["heldout"]
        lines.append(f"{r['row']:<13}{r['steps']:>6}{fmt(r['answers_s']):>11}{fmt(r['peak_rss_mb'], '.0f'):>10}"
                     f"{fmt(r['loop_s'], '.1f'):>9}{fmt(r['train_reward'], '.3f'):>14}"
                     f"{held['mean']:>11.3f} [{held['low']:.3f}, {held['high']:.3f}]{fmt(r.get('speedup')):>10}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "grpo_speed.json")
    parser.add_argument("--child")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.workdir, args.steps)
    workdir = Path(tempfile.mkdtemp(prefix="tunery-grpo-bench-"))
    write_prompts(workdir / "train.jsonl", args.steps * SETTINGS["prompts_per_step"], seed=1)
    heldout = write_prompts(workdir / "heldout.jsonl", 32, seed=2)
    base = heldout_reward("", heldout)
    print(f"base model held-out reward: {base['mean']:.3f} [{base['low']:.3f}, {base['high']:.3f}]", flush=True)
    rows = []
    for row in args.rows.split(","):
        result = run_child(row, workdir, args.steps) | {"row": row}
        result["answers_s"] = result["steps"] * SETTINGS["prompts_per_step"] * SETTINGS["group"] / result["loop_s"]
        result["heldout"] = heldout_reward(result["adapter"], heldout)
        rows.append(result)
    ours = next((r for r in rows if r["row"] == "tunery"), None)
    if ours:
        for r in rows:
            r["speedup"] = ours["answers_s"] / r["answers_s"]
            r["memory_ratio"] = ours["peak_rss_mb"] / r["peak_rss_mb"]
    print("\n" + table(rows))
    if ours:
        for r in rows:
            if r is not ours:
                print(f"tunery vs {r['row']}: {r['speedup']:.2f}x answers per second, {r['memory_ratio']:.2f}x peak memory")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": SETTINGS, "base_heldout": base, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
