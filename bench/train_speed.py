"""Training speed and memory: tunery against TRL SFTTrainer + PEFT, same machine, data, model and steps.

    python bench/train_speed.py [--steps 16] [--bf16-steps 2] [--out bench/results/train_speed.json]

Every row trains LoRA r=16 (alpha 32, dropout 0.05) on all linear layers of the embedded
SmolLM2-135M-Instruct, learning rate 2e-4 with a cosine schedule and no warmup, batch 4, max length
512, on the same examples, each exactly once, in its own process (so each row's peak memory is its
own). The work is the dataset's real tokens: padding and recomputation never count. Held-out loss is
computed afterwards for every row by the same code (tunery's loss on the same held-out file).

Rows:
  trl-default-bf16   SFTConfig defaults (bf16 autocast, gradient checkpointing): timed over a few
                     steps only, since bf16 has no hardware path on this CPU
  trl-default-fp32   the same defaults with bf16=False
  trl-best           fp32, padding_free=True, gradient checkpointing off, completion-only loss
  tunery             tunery's defaults (padding-free packing, head only at trained positions)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from chat_data import write_chat_set  # noqa: E402

MODEL = "smollm2-135m-instruct"
SETTINGS = dict(batch_size=4, max_length=512, lr=2e-4, rank=16, alpha=32, dropout=0.05, seed=0)
ROWS = ["trl-default-bf16", "trl-default-fp32", "trl-best", "tunery"]


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def lines_of(path: Path, n: int) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[:n]]


def run_tunery_row(train: Path, steps: int, out: Path, overrides: list[str] = ()) -> dict:
    from tunery.config.load import _set_dotted, parse_override, validate
    from tunery.data.dataset import build_datasets
    from tunery.models.load import load_model, load_tokenizer
    from tunery.runfolder import RunFolder
    from tunery.trainers import loop
    from tunery.trainers.methods import method_for

    s_ = SETTINGS
    data = {"base_model": MODEL, "data": {"train": [str(train)], "max_length": s_["max_length"]},
            "lora": {"rank": s_["rank"], "alpha": s_["alpha"], "dropout": s_["dropout"]},
            "training": {"max_steps": steps, "batch_size": s_["batch_size"], "lr": s_["lr"],
                         "warmup_ratio": 0.0, "seed": s_["seed"], "save_every": steps,
                         "eval_every": steps, "log_every": steps}}
    for text in overrides:  # --set: explore a setting (the reported row uses tunery's defaults)
        _set_dotted(data, *parse_override(text))
    cfg = validate(data)
    tokenizer = load_tokenizer(MODEL)
    data = build_datasets(cfg, tokenizer)
    data.val, data.val_examples = [], []
    s = loop.setup(cfg, method_for(cfg, tokenizer), load_model(MODEL), data)
    ran = model_token_share(s)
    run = RunFolder(out / "run")
    start = time.perf_counter()
    st, _ = loop.train(s, run, loop.LoopState(), lambda: False)
    seconds = time.perf_counter() - start
    s.method.final_artefact(s.model, run)
    return {"loop_s": seconds, "final_loss": st.last_loss, "adapter": str(run.adapter),
            "peak_rss_mb": peak_rss_mb(), "steps": st.step, "model_token_share": ran}


def model_token_share(s) -> float:
    """The tokens the model runs over the data's, over the run's whole plan: below 1 where rows of a
    piece share a prefix that goes through once (`training.share_prefix`)."""
    from tunery.trainers import loop

    ran, whole = s.method.model_tokens(p for step in range(s.plan.total_steps)
                                       for p in loop.step_pieces(s, step, dry=True))
    return ran / max(whole, 1)


def run_trl_row(row: str, train: Path, steps: int, out: Path, settings: dict = SETTINGS) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tunery.models.load import load_model, load_tokenizer

    s_ = settings
    records = lines_of(train, steps * s_["batch_size"])
    dataset = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records])
    options = dict(output_dir=str(out / "trl"), max_steps=steps, per_device_train_batch_size=s_["batch_size"],
                   learning_rate=s_["lr"], lr_scheduler_type="cosine", warmup_steps=s_.get("warmup_steps", 0),
                   max_length=s_["max_length"], logging_steps=1, save_strategy="no", report_to="none",
                   seed=s_["seed"], dataloader_drop_last=False)
    if not torch.cuda.is_available():
        # transformers refuses its bf16 default on a machine without a GPU unless told to use the CPU;
        # this is the one flag a user must add, so the "defaults" rows carry it too.
        options |= dict(use_cpu=True)
    if row == "trl-default-fp32":
        options |= dict(bf16=False)
    elif row == "trl-best":
        # TRL refuses padding_free with a max_length unless it packs; no example here reaches 512 tokens
        # (dataset_tokens checks it), so dropping the limit trains exactly the same tokens.
        options |= dict(bf16=False, padding_free=True, gradient_checkpointing=False, max_length=None)
    lora = LoraConfig(r=s_["rank"], lora_alpha=s_["alpha"], lora_dropout=s_["dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")
    losses: list[float] = []

    class KeepLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    trainer = SFTTrainer(model=load_model(MODEL, "float32"), args=SFTConfig(**options), train_dataset=dataset,
                         processing_class=load_tokenizer(MODEL), peft_config=lora, callbacks=[KeepLoss()])
    torch.manual_seed(s_["seed"])
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.model.save_pretrained(out / "adapter")
    return {"loop_s": seconds, "final_loss": losses[-1] if losses else None, "adapter": str(out / "adapter"),
            "peak_rss_mb": peak_rss_mb(), "steps": steps}


def dataset_tokens(train: Path, n: int, max_length: int = SETTINGS["max_length"]) -> tuple[int, int]:
    """Real tokens and trained tokens of the first n examples, as tunery renders them."""
    from tunery.data.dataset import load_examples
    from tunery.data.render import render_example
    from tunery.models.load import load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    examples, _ = load_examples([str(train)])
    rendered = [render_example(e, tokenizer, "assistant", max_length) for e in examples[:n]]
    if any(r.truncated for r in rendered):
        raise SystemExit("an example reaches max_length: the trl-best row (no max_length) would train other tokens")
    return sum(len(r.ids) for r in rendered), sum(r.num_trained for r in rendered)


def heldout_loss(adapter: str, heldout: Path, max_length: int = SETTINGS["max_length"]) -> float:
    """Mean loss per trained token on the held-out file, the same code for every row."""
    from peft import PeftModel

    from tunery.data.dataset import load_examples
    from tunery.data.render import render_example
    from tunery.models.load import load_model, load_tokenizer
    from tunery.models.forward import mean_loss

    tokenizer = load_tokenizer(MODEL)
    model = PeftModel.from_pretrained(load_model(MODEL), adapter).eval()
    examples, _ = load_examples([str(heldout)])
    rows = [render_example(e, tokenizer, "assistant", max_length) for e in examples]
    return mean_loss(model, rows, tokenizer.pad_token_id)[0]


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Best-of fp32 matmul throughput on this machine right now."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def useful_flops(real_tokens: int, trained_tokens: int) -> float:
    """6 x parameters on the path every token takes (the decoder's linear layers), plus 6 x the output
    head's parameters for each trained token (the only positions whose logits the loss needs)."""
    from tunery.models.load import load_model

    model = load_model(MODEL)
    head = model.get_output_embeddings().weight.numel()
    linear = sum(m.weight.numel() for n, m in model.model.named_modules() if m.__class__.__name__ == "Linear")
    return 6.0 * linear * real_tokens + 6.0 * head * trained_tokens


def child(row: str, workdir: Path, steps: int, overrides: list[str]) -> None:
    train = workdir / "chat_train.jsonl"
    out = workdir / row
    out.mkdir(parents=True, exist_ok=True)
    result = run_tunery_row(train, steps, out, overrides) if row == "tunery" else run_trl_row(row, train, steps, out)
    print("RESULT " + json.dumps(result), flush=True)


def run_child(row: str, workdir: Path, steps: int, overrides: list[str]) -> dict:
    print(f"running {row} ({steps} steps) ...", flush=True)
    extra = [f"--set={o}" for o in overrides]
    proc = subprocess.run([sys.executable, __file__, "--child", row, "--workdir", str(workdir),
                           "--steps", str(steps), *extra], capture_output=True, text=True,
                          env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
    results = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        raise SystemExit(f"{row} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(results[-1][len("RESULT "):])


def fmt(value, spec=".1f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table(rows: list[dict]) -> str:
    head = (f"{'row':<18}{'steps':>6}{'real tok/s':>12}{'trained tok/s':>15}{'peak MiB':>10}"
            f"{'loop s':>9}{'train loss':>12}{'held-out':>10}{'tunery x':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['row']:<18}{r['steps']:>6}{fmt(r['real_tok_s']):>12}{fmt(r['trained_tok_s']):>15}"
                     f"{fmt(r['peak_rss_mb'], '.0f'):>10}{fmt(r['loop_s']):>9}{fmt(r['final_loss'], '.4f'):>12}"
                     f"{fmt(r.get('heldout_loss'), '.4f'):>10}{fmt(r.get('speedup'), '.2f'):>10}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--bf16-steps", type=int, default=2)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "train_speed.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the tunery row only (to explore settings)")
    parser.add_argument("--child")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.workdir, args.steps, args.set)

    workdir = Path(tempfile.mkdtemp(prefix="tunery-bench-"))
    train, heldout = write_chat_set(workdir, n_train=args.steps * SETTINGS["batch_size"], n_heldout=24)
    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak (2048^2, best of 10): {peak:.1f} GFLOP/s", flush=True)
    rows = []
    for row in args.rows.split(","):
        steps = args.bf16_steps if row == "trl-default-bf16" else args.steps
        result = run_child(row, workdir, steps, args.set) | {"row": row}
        real, trained = dataset_tokens(train, steps * SETTINGS["batch_size"])
        result |= {"real_tokens": real, "trained_tokens": trained, "real_tok_s": real / result["loop_s"],
                   "trained_tok_s": trained / result["loop_s"]}
        result["heldout_loss"] = heldout_loss(result["adapter"], heldout) if row != "trl-default-bf16" else None
        rows.append(result)
        partial = args.out.with_suffix(".partial.json")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"matmul_peak_gflops": peak, "rows": rows}, indent=2))
    ours = next((r for r in rows if r["row"] == "tunery"), None)
    summary = {"matmul_peak_gflops": peak, "settings": SETTINGS, "tunery_overrides": args.set, "rows": rows}
    if ours:
        for r in rows:
            r["speedup"] = ours["real_tok_s"] / r["real_tok_s"]
            r["memory_ratio"] = ours["peak_rss_mb"] / r["peak_rss_mb"]
        # FLOPs of the tokens the model ran: a shared prefix counts once
        ran = ours["real_tokens"] * ours.get("model_token_share", 1.0)
        flops = useful_flops(ran, ours["trained_tokens"]) / ours["loop_s"] / 1e9
        summary |= {"tunery_useful_gflops": flops, "tunery_share_of_peak": flops / peak}
    print("\n" + table(rows))
    if ours:
        print(f"\ntunery useful compute: {summary['tunery_useful_gflops']:.1f} GFLOP/s = "
              f"{100 * summary['tunery_share_of_peak']:.0f}% of the measured fp32 matmul peak (on the "
              f"{100 * ours.get('model_token_share', 1.0):.0f}% of the data's tokens the model ran)")
        for r in rows:
            if r is not ours:
                print(f"tunery vs {r['row']}: {r['speedup']:.2f}x real work per second, "
                      f"{r['memory_ratio']:.2f}x peak memory"
                      + (f", held-out loss {ours['heldout_loss']:.4f} vs {r['heldout_loss']:.4f}"
                         if r.get("heldout_loss") else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
