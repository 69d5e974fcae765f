"""Online RL speed and memory: tunery's `method: rl` (GRPO) against TRL's GRPOTrainer + PEFT.

    flock /tmp/tunery-bench.lock python bench/grpo_speed.py --threads 1 [--steps 8] [--out FILE]

(`make bench-grpo`; the lock keeps two benches of this checkout from timing each other.) On a shared
machine `--threads 1` is the fair setting: two torch threads on cores that other processes also use
made one decode step of batch 16 about 20x slower than one thread did (synchronisation waits), for
every row alike.

Every row trains a LoRA adapter (r=16, alpha 32, no dropout, all linear layers) on the embedded
SmolLM2-135M-Instruct in fp32 on the CPU with GRPO on the word problems of examples/rl (the first
`steps x 4` training prompts, so every row sees the same prompts once): 4 prompts a step, 4 sampled
answers each (temperature 0.7, at most 32 new tokens), the reward `0.8*numeric+0.2*max_words:16`
scored by tunery's grader code in every row, no KL term (beta 0), learning rate 2e-4 with cosine decay
and no warmup, TRL's default loss ("dapo", which tunery's token sum over the step is). Each row runs
in its own process (its peak memory is its own). Afterwards every row's adapter answers the same
held-out prompts greedily, scored by the same code (mean reward with a 95% bootstrap interval).

Rows:
  trl-default   GRPOConfig defaults on a CPU (fp32 via bf16=False, use_cpu=True; gradient checkpointing on)
  trl-no-gc     the same without gradient checkpointing
  tunery        tunery's defaults for method: rl

Throughput is sampled answers per second over the steps after the first (the first pays one-time
costs: allocator warm-up, lazy imports); peak memory is the process's peak resident set (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "rl"
MODEL = "smollm2-135m-instruct"
REWARD = "0.8*numeric+0.2*max_words:16"
SETTINGS = dict(prompts_per_step=4, group=4, max_new_tokens=32, temperature=0.7, lr=2e-4, rank=16, alpha=32,
                dropout=0.0, seed=42, reward=REWARD, heldout=40)
ROWS = ["trl-default", "trl-no-gc", "tunery"]


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def rate_after_first(step_times: list[float]) -> float:
    """Sampled answers per second over steps 2..N, from the clock reading at the end of each step."""
    per_step = SETTINGS["prompts_per_step"] * SETTINGS["group"]
    if len(step_times) < 2:
        return float("nan")
    return per_step * (len(step_times) - 1) / (step_times[-1] - step_times[0])


def run_tunery_row(train: Path, steps: int, out: Path, threads: int | None) -> dict:
    from tunery.config.load import validate
    from tunery.trainers.run import run_training

    s = SETTINGS
    cfg = validate({
        "base_model": MODEL, "method": "rl", "data": {"train": [str(train)], "val_split": 0.0},
        "lora": {"rank": s["rank"], "alpha": s["alpha"], "dropout": s["dropout"], "target_modules": "all-linear"},
        "rl": {"graders": [s["reward"]], "group_size": s["group"], "max_new_tokens": s["max_new_tokens"],
               "temperature": s["temperature"], "kl_beta": 0.0, "log_completions": 0},
        "training": {"max_steps": steps, "batch_size": s["prompts_per_step"], "lr": s["lr"], "warmup_ratio": 0.0,
                     "scheduler": "cosine", "seed": s["seed"], "save_every": steps, "preflight": False,
                     "threads": threads}})
    info = run_training(cfg, out / "run", log=lambda _t: None)
    lines = [m for m in read_jsonl(out / "run" / "metrics.jsonl") if m["kind"] == "train"]
    return {"steps": info["step"], "adapter": str(out / "run" / "adapter"),
            "answers_s": rate_after_first([m["elapsed_s"] for m in lines]),
            "train_reward": sum(m["reward"] for m in lines) / len(lines),
            "answer_tokens": sum(m["completion_tokens"] for m in lines) / len(lines),
            "peak_rss_mb": peak_rss_mb()}


def run_trl_row(row: str, train: Path, steps: int, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tunery.graders import parse_grader
    from tunery.models.load import load_model, load_tokenizer

    s = SETTINGS
    grader = parse_grader(s["reward"])
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
                              for r in read_jsonl(train)])

    def reward(completions, answer, **_kw):
        return [grader.score(c[0]["content"], a) for c, a in zip(completions, answer)]

    history: list[dict] = []  # TRL's logged figures per step
    clock: list[float] = []

    class Keep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                history.append(dict(logs))

    options = dict(output_dir=str(out / "trl"), max_steps=steps,
                   per_device_train_batch_size=s["prompts_per_step"] * s["group"], num_generations=s["group"],
                   max_completion_length=s["max_new_tokens"], temperature=s["temperature"],
                   learning_rate=s["lr"], lr_scheduler_type="cosine", warmup_steps=0, logging_steps=1,
                   save_strategy="no", report_to="none", seed=s["seed"], beta=0.0, bf16=False, use_cpu=True)
    if row == "trl-no-gc":
        options |= dict(gradient_checkpointing=False)
    lora = LoraConfig(r=s["rank"], lora_alpha=s["alpha"], lora_dropout=s["dropout"], target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=load_model(MODEL, "float32"), reward_funcs=[reward], args=GRPOConfig(**options),
                          train_dataset=data, processing_class=load_tokenizer(MODEL), peft_config=lora,
                          callbacks=[Keep()])
    torch.manual_seed(s["seed"])
    trainer.train()
    trainer.model.save_pretrained(out / "adapter")
    lengths = [x["completions/mean_length"] for x in history if "completions/mean_length" in x]
    return {"steps": len(clock), "adapter": str(out / "adapter"), "answers_s": rate_after_first(clock),
            "train_reward": sum(x["reward"] for x in history) / len(history) if history else None,
            "answer_tokens": sum(lengths) / len(lengths) if lengths else None, "peak_rss_mb": peak_rss_mb()}


def heldout_reward(adapter: str, heldout: Path) -> dict:
    """Mean reward of greedy answers to the held-out prompts, with a 95% bootstrap interval: the same code
    for every row (the base model when `adapter` is empty)."""
    from peft import PeftModel

    from tunery.eval.stats import bootstrap_ci
    from tunery.graders import parse_grader
    from tunery.inference import generate_batch
    from tunery.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    base = load_model(MODEL)
    model = (PeftModel.from_pretrained(base, adapter) if adapter else base).eval()
    records = read_jsonl(heldout)
    answers = generate_batch(model, tokenizer, [[{"role": "user", "content": r["prompt"]}] for r in records],
                             max_new_tokens=SETTINGS["max_new_tokens"], batch_size=20)
    grader = parse_grader(SETTINGS["reward"])
    ci = bootstrap_ci([grader.score(a, r["answer"]) for a, r in zip(answers, records)])
    return {"mean": ci.mean, "low": ci.low, "high": ci.high, "n": ci.n}


def child(row: str, workdir: Path, steps: int, threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    out = workdir / row
    out.mkdir(parents=True, exist_ok=True)
    train = workdir / "train.jsonl"
    if row == "heldout":
        result = heldout_reward(os.environ.get("GRPO_BENCH_ADAPTER", ""), workdir / "heldout.jsonl")
    elif row == "tunery":
        result = run_tunery_row(train, steps, out, threads)
    else:
        result = run_trl_row(row, train, steps, out)
    print("RESULT " + json.dumps(result), flush=True)


def run_child(row: str, workdir: Path, steps: int, threads: int | None, adapter: str = "") -> dict:
    env = os.environ | {"TOKENIZERS_PARALLELISM": "false", "GRPO_BENCH_ADAPTER": adapter}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, __file__, "--child", row, "--workdir", str(workdir), "--steps", str(steps)]
    proc = subprocess.run(command + (["--threads", str(threads)] if threads else []), capture_output=True,
                          text=True, env=env)
    results = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        raise SystemExit(f"{row} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(results[-1][len("RESULT "):])


def fmt(value, spec=".2f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table(rows: list[dict], base: dict) -> str:
    head = (f"{'row':<13}{'steps':>6}{'answers/s':>11}{'peak MiB':>10}{'answer tok':>12}{'train reward':>14}"
            f"{'held-out reward [95% CI]':>27}{'tunery is':>26}")
    lines = [head, "-" * len(head)]
    lines.append(f"{'base model':<13}{'':>6}{'':>11}{'':>10}{'':>12}{'':>14}"
                 f"{base['mean']:>10.3f} [{base['low']:.3f}, {base['high']:.3f}]")
    for r in rows:
        held = r["heldout"]
        versus = "" if r["row"] == "tunery" or "speedup" not in r else \
            f"{r['speedup']:.2f}x faster, {r['memory_ratio']:.2f}x mem"
        lines.append(f"{r['row']:<13}{r['steps']:>6}{fmt(r['answers_s']):>11}{fmt(r['peak_rss_mb'], '.0f'):>10}"
                     f"{fmt(r['answer_tokens'], '.1f'):>12}{fmt(r['train_reward'], '.3f'):>14}"
                     f"{held['mean']:>10.3f} [{held['low']:.3f}, {held['high']:.3f}]{versus:>26}")
    return "\n".join(lines)


def prepare_data(workdir: Path, steps: int) -> None:
    """The first `steps x prompts_per_step` training problems (one pass) and the first held-out ones."""
    train = read_jsonl(EXAMPLE / "train.jsonl")[: steps * SETTINGS["prompts_per_step"]]
    write_jsonl(workdir / "train.jsonl", [{"prompt": r["prompt"], "answer": r["answer"]} for r in train])
    write_jsonl(workdir / "heldout.jsonl", read_jsonl(EXAMPLE / "heldout.jsonl")[: SETTINGS["heldout"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every row (default: torch's)")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "grpo_speed.json")
    parser.add_argument("--child")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.workdir, args.steps, args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="tunery-grpo-bench-"))
    prepare_data(workdir, args.steps)
    started = time.time()
    rows = []
    for row in args.rows.split(","):
        print(f"running {row} ({args.steps} steps) ...", flush=True)
        result = run_child(row, workdir, args.steps, args.threads) | {"row": row}
        result["heldout"] = run_child("heldout", workdir, args.steps, args.threads, result["adapter"])
        rows.append(result)
    base = run_child("heldout", workdir, args.steps, args.threads)
    ours = next((r for r in rows if r["row"] == "tunery"), None)
    if ours:
        for r in rows:
            r["speedup"] = ours["answers_s"] / r["answers_s"]
            r["memory_ratio"] = ours["peak_rss_mb"] / r["peak_rss_mb"]
    print("\n" + table(rows, base))
    for r in rows:
        if ours and r is not ours:
            print(f"tunery vs {r['row']}: {r['speedup']:.2f}x answers per second, {r['memory_ratio']:.2f}x peak memory")
    print(f"({len(rows)} rows in {(time.time() - started) / 60:.1f} min; threads: {args.threads or 'torch default'})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"settings": SETTINGS, "steps": args.steps, "threads": args.threads, "base_heldout": base, "rows": rows,
               "load_average_at_end": os.getloadavg(), "minutes": round((time.time() - started) / 60, 1)}
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out}")
    shutil.rmtree(workdir)  # this run's data, adapters and TRL outputs


if __name__ == "__main__":
    main()
