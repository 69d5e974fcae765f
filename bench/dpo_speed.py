"""DPO speed and memory: tunery `method: dpo` against TRL's DPOTrainer + PEFT, same machine, pairs, model
and settings.

    python bench/dpo_speed.py [--steps 8] [--rows trl-default-fp32,trl-best,tunery] [--out bench/results/dpo_speed.json]

Every row trains LoRA r=16 (alpha 32, dropout 0: TRL's DPOTrainer switches dropout off by default) on all
linear layers of the embedded SmolLM2-135M-Instruct with the sigmoid DPO loss, beta 0.1, learning rate
5e-4 with a cosine schedule and no warmup, batch 4 pairs, max length 128, on the same pairs of the
preference example (examples/preference/train.jsonl, each pair at most once), the reference being the
base model (the adapter switched off, or log-probs precomputed once), each row in its own process (its
peak memory is its own). The timed part is what a user waits for once the model is loaded: preparing
the pairs (tokenising), any reference precomputation, and the training loop. Held-out figures are
computed afterwards for every row by the same code (`tunery.eval.pairs`): the DPO loss and the
preference accuracy (implicit reward margin > 0) on 32 held-out pairs.

Rows:
  trl-default-bf16   DPOConfig defaults (bf16 autocast, gradient checkpointing): only when --rows names
                     it, over --bf16-steps steps, since bf16 has no hardware path on this CPU
  trl-default-fp32   the same defaults with bf16=False
  trl-best           fp32, gradient checkpointing off, reference log-probs precomputed
                     (padding_free is unavailable in TRL 1.16's DPOTrainer: it warns and pads)
  tunery             tunery's defaults (both sides of every pair in one packed forward, head only at
                     the answers' positions, reference from the adapter switched off)
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
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from train_speed import fmt, peak_rss_mb  # noqa: E402

MODEL = "smollm2-135m-instruct"
TRAIN = REPO / "examples" / "preference" / "train.jsonl"
HELDOUT = REPO / "examples" / "preference" / "heldout.jsonl"
SETTINGS = dict(batch_size=4, max_length=128, lr=5e-4, rank=16, alpha=32, dropout=0.0, beta=0.1, seed=0,
                heldout=32)
ROWS = ["trl-default-bf16", "trl-default-fp32", "trl-best", "tunery"]
DEFAULT_ROWS = ROWS[1:]  # bf16 runs ~20x slower than fp32 on this CPU (docs/speed-and-scale.md): --rows adds it


def first_pairs(path: Path, n: int) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:n]]


def run_tunery_row(train: Path, steps: int, out: Path, overrides: list[str]) -> dict:
    from tunery.config.load import _set_dotted, parse_override, validate
    from tunery.runfolder import RunFolder
    from tunery.trainers import loop
    from tunery.trainers.methods import method_for
    from tunery.models.load import load_tokenizer

    s_ = SETTINGS
    data = {"base_model": MODEL, "method": "dpo",
            "data": {"train": [str(train)], "max_length": s_["max_length"], "val_split": 0.0},
            "lora": {"rank": s_["rank"], "alpha": s_["alpha"], "dropout": s_["dropout"]},
            "preference": {"beta": s_["beta"]},
            "training": {"max_steps": steps, "batch_size": s_["batch_size"], "lr": s_["lr"], "warmup_ratio": 0.0,
                         "seed": s_["seed"], "save_every": steps, "eval_every": steps, "log_every": steps}}
    for text in overrides:  # --set: explore a setting (the reported row uses tunery's defaults)
        _set_dotted(data, *parse_override(text))
    cfg = validate(data)
    method = method_for(cfg, load_tokenizer(MODEL))
    model = method.load_base()
    start = time.perf_counter()
    prepared = method.load_data()
    s = loop.setup(cfg, method, model, prepared)  # precomputes reference log-probs when told to
    prep = time.perf_counter() - start
    run = RunFolder(out / "run")
    st, _ = loop.train(s, run, loop.LoopState(), lambda: False)
    seconds = time.perf_counter() - start
    method.final_artefact(s.model, run)
    return {"timed_s": seconds, "prep_s": prep, "final_loss": st.last_loss, "adapter": str(run.adapter),
            "peak_rss_mb": peak_rss_mb(), "steps": st.step}


def run_trl_row(row: str, train: Path, steps: int, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from tunery.models.load import load_model, load_tokenizer

    s_ = SETTINGS
    records = first_pairs(train, steps * s_["batch_size"])
    dataset = Dataset.from_list([{"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                  "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in records])
    options = dict(output_dir=str(out / "trl"), max_steps=steps, per_device_train_batch_size=s_["batch_size"],
                   learning_rate=s_["lr"], lr_scheduler_type="cosine", warmup_steps=0, beta=s_["beta"],
                   max_length=s_["max_length"], logging_steps=1, save_strategy="no", report_to="none",
                   seed=s_["seed"], dataloader_drop_last=False)
    if not torch.cuda.is_available():
        options |= dict(use_cpu=True)  # the one flag transformers demands without a GPU
    if row == "trl-default-fp32":
        options |= dict(bf16=False)
    elif row == "trl-best":
        options |= dict(bf16=False, gradient_checkpointing=False, precompute_ref_log_probs=True)
    lora = LoraConfig(r=s_["rank"], lora_alpha=s_["alpha"], lora_dropout=s_["dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")
    losses: list[float] = []

    class KeepLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    model, tokenizer = load_model(MODEL, "float32"), load_tokenizer(MODEL)
    torch.manual_seed(s_["seed"])
    start = time.perf_counter()
    trainer = DPOTrainer(model=model, args=DPOConfig(**options), train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora, callbacks=[KeepLoss()])
    prep = time.perf_counter() - start
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.model.save_pretrained(out / "adapter")
    return {"timed_s": seconds, "prep_s": prep, "final_loss": losses[-1] if losses else None,
            "adapter": str(out / "adapter"), "peak_rss_mb": peak_rss_mb(), "steps": steps}


def pair_tokens(train: Path, n: int) -> int:
    """Real tokens of the first n pairs (both sides: prompt + answer each), as tunery renders them."""
    from tunery.eval.pairs import read_pairs, render_pairs
    from tunery.models.load import load_tokenizer

    rows, _ = render_pairs(read_pairs(str(train), n), load_tokenizer(MODEL), SETTINGS["max_length"])
    return sum(len(r.chosen.ids) + len(r.rejected.ids) for r in rows)


def heldout_figures(adapter: str, heldout: Path) -> dict:
    """DPO loss and preference accuracy (margin > 0) on the held-out pairs, the same code for every row."""
    import torch
    from peft import PeftModel

    from tunery.eval.pairs import answer_logps, read_pairs, render_pairs
    from tunery.losses.preference import PREFERENCE_LOSSES
    from tunery.models.load import load_model, load_tokenizer
    from tunery.trainers.methods.preference import reference_mode

    tokenizer = load_tokenizer(MODEL)
    model = PeftModel.from_pretrained(load_model(MODEL), adapter).eval()
    rows, _ = render_pairs(read_pairs(str(heldout), SETTINGS["heldout"]), tokenizer, SETTINGS["max_length"])
    policy, _ = answer_logps(model, rows, tokenizer.pad_token_id)
    with reference_mode(model):
        ref, _ = answer_logps(model, rows, tokenizer.pad_token_id)
    losses = PREFERENCE_LOSSES["sigmoid"](policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta=SETTINGS["beta"])
    margin = (policy[:, 0] - ref[:, 0]) - (policy[:, 1] - ref[:, 1])
    return {"heldout_loss": float(losses.mean()), "heldout_accuracy": float((margin > 0).double().mean())}


def child(row: str, workdir: Path, steps: int, overrides: list[str]) -> None:
    out = workdir / row
    out.mkdir(parents=True, exist_ok=True)
    train = workdir / "train.jsonl"
    result = run_tunery_row(train, steps, out, overrides) if row == "tunery" else run_trl_row(row, train, steps, out)
    print("RESULT " + json.dumps(result), flush=True)


def run_child(row: str, workdir: Path, steps: int, overrides: list[str]) -> dict:
    print(f"running {row} ({steps} steps) ...", flush=True)
    extra = [f"--set={o}" for o in overrides]
    proc = subprocess.run([sys.executable, __file__, "--child", row, "--workdir", str(workdir), "--steps", str(steps),
                           *extra], capture_output=True, text=True,
                          env=os.environ | {"TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"})
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        raise SystemExit(f"{row} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(results[-1][len("RESULT "):])


def table(rows: list[dict]) -> str:
    head = (f"{'row':<18}{'steps':>6}{'steps/s':>9}{'pairs/s':>9}{'tok/s':>8}{'peak MiB':>10}{'prep s':>8}"
            f"{'timed s':>9}{'train loss':>12}{'held-out loss':>15}{'held-out acc':>14}{'tunery x':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['row']:<18}{r['steps']:>6}{fmt(r['steps_per_s'], '.4f'):>9}{fmt(r['pairs_per_s'], '.3f'):>9}"
                     f"{fmt(r['tokens_per_s']):>8}{fmt(r['peak_rss_mb'], '.0f'):>10}{fmt(r['prep_s']):>8}"
                     f"{fmt(r['timed_s']):>9}{fmt(r['final_loss'], '.4f'):>12}{fmt(r.get('heldout_loss'), '.4f'):>15}"
                     f"{fmt(r.get('heldout_accuracy'), '.3f'):>14}{fmt(r.get('speedup'), '.2f'):>10}")
    return "\n".join(lines)


def summarize(rows: list[dict]) -> list[str]:
    ours = next((r for r in rows if r["row"] == "tunery"), None)
    if ours is None:
        return []
    lines = []
    for r in rows:
        r["speedup"] = ours["pairs_per_s"] / r["pairs_per_s"]
        r["memory_ratio"] = ours["peak_rss_mb"] / r["peak_rss_mb"]
        if r is not ours:
            held = (f", held-out loss {ours['heldout_loss']:.4f} vs {r['heldout_loss']:.4f}, accuracy "
                    f"{ours['heldout_accuracy']:.3f} vs {r['heldout_accuracy']:.3f}" if r.get("heldout_loss") is not None else "")
            lines.append(f"tunery vs {r['row']}: {r['speedup']:.2f}x pairs per second, {r['memory_ratio']:.2f}x peak "
                         f"memory{held}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--bf16-steps", type=int, default=2)
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"any of {','.join(ROWS)}")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "dpo_speed.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the tunery row only (to explore settings)")
    parser.add_argument("--child")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.workdir, args.steps, args.set)

    workdir = Path(tempfile.mkdtemp(prefix="tunery-dpo-bench-"))
    # The pairs every row trains on, each once: the first steps x batch of the example's training file.
    train = workdir / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in first_pairs(TRAIN, args.steps * SETTINGS["batch_size"])))
    rows = []
    for row in args.rows.split(","):
        steps = args.bf16_steps if row == "trl-default-bf16" else args.steps
        started = time.strftime("%H:%M:%S")
        result = run_child(row, workdir, steps, args.set) | {"row": row, "started": started}
        pairs = steps * SETTINGS["batch_size"]
        result |= {"pairs": pairs, "tokens": pair_tokens(train, pairs), "steps_per_s": steps / result["timed_s"],
                   "pairs_per_s": pairs / result["timed_s"]}
        result["tokens_per_s"] = result["tokens"] / result["timed_s"]
        if row != "trl-default-bf16":
            result |= heldout_figures(result["adapter"], HELDOUT)
        rows.append(result)
        print(f"  {row}: {result['timed_s']:.1f} s, peak {result['peak_rss_mb']:.0f} MiB", flush=True)
        partial = args.out.with_suffix(".partial.json")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"settings": SETTINGS, "rows": rows}, indent=2))
    comparisons = summarize(rows)
    print("\n" + table(rows))
    print("\n" + "\n".join(comparisons) if comparisons else "")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": SETTINGS, "tunery_overrides": args.set, "rows": rows,
                                    "comparisons": comparisons, "load_average": os.getloadavg()}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
