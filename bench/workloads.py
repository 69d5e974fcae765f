"""Training speed on the shapes users have: short examples and long ones, tunery as a user runs it.

    python bench/workloads.py [--workloads short,long] [--out bench/results/workloads.json]

Each workload trains LoRA r16 (alpha 32, dropout 0.05, all linear layers) on the embedded
SmolLM2-135M-Instruct twice, each row in its own process, one after the other:

- `tunery`: `tunery train CONFIG` with the workload's config as a user runs it: validation loss every
  `eval_every` steps, checkpoints, the best step restored at the end, and graders scoring greedy
  answers during training where the config has them (the quickstart does). Its loop time includes all
  of that.
- `trl-best`: TRL's SFTTrainer + PEFT at its fastest settings on this CPU (fp32, padding-free,
  completion-only loss, no gradient checkpointing), same data, steps, batch, learning rate and LoRA
  dropout, with no evaluation, no checkpoint and no generation inside.

Workloads:
- `short`: the quickstart (JSON extraction, 60-120 tokens an example): its config, 288 training
  examples and 32 validation examples, batch 8, 72 steps (2 epochs).
- `long`: generated chat with 500-1,000-token examples (`bench/chat_data.py`): 48 training and 8
  validation examples, batch 4, max length 1,024, 6 steps (half an epoch; over 2 minutes a row).

`--heldout-seeds 0,1` trains both rows of each workload again at each of these seeds (tunery:
`training.seed`; TRL: its seed), for their held-out loss only, and prints each row's mean and range over
every seed run (the timed run's included): near zero, as on the quickstart, one run's held-out loss
moves by tens of percent from one seed to another, so a single pair cannot show a 2% difference.

Figures per row: real tokens per second (the data's tokens over the loop's wall time), peak resident
memory, held-out loss (the same code for both), and for tunery the share of the fp32 matmul peak
(measured in the same run) spent on useful FLOPs: those of the tokens it put through the model (a
prefix that rows share counted once, as `training.share_prefix` runs it; its log line says how many).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from chat_data import write_long_set  # noqa: E402
from train_speed import (MODEL, dataset_tokens, heldout_loss, matmul_peak_gflops, run_trl_row,  # noqa: E402
                         useful_flops)

LORA = dict(rank=16, alpha=32, dropout=0.05, seed=0)
WORKLOADS = {
    "short": dict(batch_size=8, max_length=256, lr=5e-4, steps=72),
    "long": dict(batch_size=4, max_length=1024, lr=2e-4, steps=6),
}


def prepare(name: str, folder: Path) -> dict[str, Path]:
    """The workload's train, val and held-out files and its tunery config, written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    w = WORKLOADS[name]
    if name == "short":
        quick = REPO / "examples" / "quickstart"
        lines = (quick / "train.jsonl").read_text().splitlines(keepends=True)
        files = {"train": folder / "train.jsonl", "val": folder / "val.jsonl", "heldout": quick / "heldout.jsonl"}
        files["train"].write_text("".join(lines[:288]))
        files["val"].write_text("".join(lines[288:]))
        config = (quick / "config.yaml").read_text()
        overrides = [f"data.train=[{files['train']}]", f"data.validation=[{files['val']}]", "data.val_split=0",
                     f"training.max_steps={w['steps']}"]
    else:
        files = write_long_set(folder, {"train": 48, "val": 8, "heldout": 16})
        config = (f"base_model: {MODEL}\nadapter: lora\nlora: {{rank: 16, alpha: 32, dropout: 0.05}}\n"
                  f"data: {{train: [{files['train']}], validation: [{files['val']}], max_length: {w['max_length']}}}\n"
                  f"training: {{max_steps: {w['steps']}, batch_size: {w['batch_size']}, lr: {w['lr']}, seed: 0}}\n")
        overrides = []
    (folder / "config.yaml").write_text(config)
    return files | {"config": folder / "config.yaml", "overrides": overrides}


def run_tunery(files: dict, folder: Path) -> dict:
    """`tunery train` in its own process; loop time from run.json, peak memory from /usr/bin/time."""
    cmd = ["/usr/bin/time", "-f", "MAXRSS %M", str(Path(sys.executable).parent / "tunery"), "train",
           str(files["config"]), f"output.dir={folder}", "output.name=run", *files["overrides"]]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=files["config"].parent,
                          env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise SystemExit(f"tunery failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    info = json.loads((folder / "run" / "run.json").read_text())
    rss = next(int(l.split()[1]) for l in proc.stderr.splitlines() if l.startswith("MAXRSS "))
    lines = proc.stderr.splitlines() + proc.stdout.splitlines()
    checkpoints = [l for l in lines if l.startswith("checkpoints: ")]
    # "share_prefix: A of B tokens go through the model ...": the share of the data's tokens computed
    shared = [l for l in lines if l.startswith("share_prefix: ")]
    through = 1.0
    if shared:
        a, b = shared[-1].split(" tokens")[0][len("share_prefix: "):].split(" of ")
        through = int(a.replace(",", "")) / int(b.replace(",", ""))
    return {"loop_s": info["elapsed_s"], "steps": info["step"], "peak_rss_mb": rss / 1024,
            "adapter": str(folder / "run" / "adapter"), "checkpoints": checkpoints[-1:] or None,
            "share_prefix": shared[-1] if shared else None, "computed_share": through}


def run_trl(name: str, files: dict, folder: Path, seed: int | None = None) -> dict:
    w = WORKLOADS[name]
    settings = dict(LORA, batch_size=w["batch_size"], max_length=w["max_length"], lr=w["lr"])
    if seed is not None:
        settings["seed"] = seed
    cmd = [sys.executable, __file__, "--child-trl", name, "--steps", str(w["steps"]), "--train", str(files["train"]), "--folder", str(folder),
           "--settings", json.dumps(settings)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
    results = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        raise SystemExit(f"trl failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(results[-1][len("RESULT "):])


def seed_of(files: dict) -> int:
    """The seed tunery's timed run trains with: its config's with the workload's overrides."""
    from tunery.config.load import load_config

    return load_config(files["config"], files["overrides"]).config.training.seed


def heldout_over_seeds(name: str, files: dict, root: Path, rows: list[dict], seeds: list[int]) -> dict:
    """Each row's held-out loss at the timed run's seed and at `seeds`, with their mean and range (a seed
    a row's timed run already used is not trained again)."""
    w = WORKLOADS[name]
    trl, ours = rows
    losses = {"trl-best": {LORA["seed"]: trl["heldout_loss"]}, "tunery": {seed_of(files): ours["heldout_loss"]}}
    train = {"trl-best": lambda seed, folder: run_trl(name, files, folder, seed),
             "tunery": lambda seed, folder: run_tunery(
                 dict(files, overrides=[*files["overrides"], f"training.seed={seed}"]), folder)}
    for seed in seeds:
        for row, run in train.items():
            if seed in losses[row]:
                continue
            print(f"{name}: {row} held-out at seed {seed} ...", flush=True)
            r = run(seed, root / name / f"seed{seed}" / row)
            losses[row][seed] = heldout_loss(r["adapter"], files["heldout"], w["max_length"])
    return summarize(losses)


def summarize(losses: dict[str, dict[int, float]]) -> dict:
    """{row: its losses by seed, mean, min, max} and tunery's mean against TRL's ("mean_change")."""
    summary = {row: {"by_seed": by_seed, "mean": sum(by_seed.values()) / len(by_seed),
                     "min": min(by_seed.values()), "max": max(by_seed.values())} for row, by_seed in losses.items()}
    summary["mean_change"] = summary["tunery"]["mean"] / summary["trl-best"]["mean"] - 1
    return summary


def seeds_lines(name: str, summary: dict) -> list[str]:
    lines = []
    for row in ("trl-best", "tunery"):
        r = summary[row]
        each = ", ".join(f"{seed}: {loss:.4f}" for seed, loss in r["by_seed"].items())
        lines.append(f"{name}: {row} held-out over {len(r['by_seed'])} seeds: mean {r['mean']:.4f}, "
                     f"range {r['min']:.4f}-{r['max']:.4f} ({each})")
    lines.append(f"{name}: tunery's mean held-out loss against TRL's: {100 * summary['mean_change']:+.1f}%")
    return lines


def measure(name: str, root: Path, peak: float, seeds: list[int] = ()) -> list[dict]:
    w = WORKLOADS[name]
    files = prepare(name, root / name)
    train_lines = len(files["train"].read_text().splitlines())
    real, trained = dataset_tokens(files["train"], train_lines, w["max_length"])
    epochs = w["steps"] * w["batch_size"] / train_lines
    real, trained = real * epochs, trained * epochs
    rows = []
    for row, fn in (("trl-best", lambda: run_trl(name, files, root / name / "trl")),
                    ("tunery", lambda: run_tunery(files, root / name / "tunery"))):
        print(f"{name}: running {row} ...", flush=True)
        r = fn() | {"workload": name, "row": row, "real_tokens": real, "trained_tokens": trained}
        r["real_tok_s"] = real / r["loop_s"]
        r["heldout_loss"] = heldout_loss(r["adapter"], files["heldout"], w["max_length"])
        rows.append(r)
    trl, ours = rows
    ours |= {"speedup": ours["real_tok_s"] / trl["real_tok_s"], "memory_ratio": ours["peak_rss_mb"] / trl["peak_rss_mb"],
             "heldout_change": ours["heldout_loss"] / trl["heldout_loss"] - 1,
             # FLOPs the model ran: a shared prefix's tokens count once (`computed_share` of the data's)
             "share_of_peak": useful_flops(real * ours["computed_share"], trained) / ours["loop_s"] / 1e9 / peak}
    if seeds:
        ours["heldout_seeds"] = heldout_over_seeds(name, files, root, rows, seeds)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "workloads.json")
    parser.add_argument("--steps", type=int, help="every workload's steps (a quick check of the script)")
    parser.add_argument("--heldout-seeds", default="",
                        help="comma-separated seeds: train both rows again at each, for the held-out loss only")
    parser.add_argument("--child-trl")
    parser.add_argument("--train", type=Path)
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--settings")
    args = parser.parse_args()
    for w in WORKLOADS.values():
        w["steps"] = args.steps or w["steps"]
    if args.child_trl:
        w = WORKLOADS[args.child_trl]
        result = run_trl_row("trl-best", args.train, w["steps"], args.folder, json.loads(args.settings))
        print("RESULT " + json.dumps(result), flush=True)
        return
    root = Path(tempfile.mkdtemp(prefix="tunery-workloads-"))
    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak (2048^2, best of 10): {peak:.1f} GFLOP/s", flush=True)
    seeds = [int(x) for x in args.heldout_seeds.split(",") if x]
    rows = [r for name in args.workloads.split(",") for r in measure(name, root, peak, seeds)]
    print(f"\n{'workload':<9}{'row':<10}{'steps':>6}{'real tok/s':>12}{'peak MiB':>10}{'loop s':>9}"
          f"{'held-out':>10}{'tunery x':>10}{'memory x':>10}{'% peak':>8}")
    for r in rows:
        extra = (f"{r['speedup']:>10.2f}{r['memory_ratio']:>10.2f}{100 * r['share_of_peak']:>7.0f}%"
                 if r["row"] == "tunery" else "")
        print(f"{r['workload']:<9}{r['row']:<10}{r['steps']:>6}{r['real_tok_s']:>12.1f}{r['peak_rss_mb']:>10.0f}"
              f"{r['loop_s']:>9.1f}{r['heldout_loss']:>10.4f}{extra}")
    for r in rows:
        if r["row"] == "tunery" and r.get("checkpoints"):
            print(f"{r['workload']}: {r['checkpoints'][0]}")
        if r["row"] == "tunery" and r.get("share_prefix"):
            print(f"{r['workload']}: {r['share_prefix']}")
        if r["row"] == "tunery" and r.get("heldout_seeds"):
            print("\n".join(seeds_lines(r["workload"], r["heldout_seeds"])))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"matmul_peak_gflops": peak, "workloads": WORKLOADS, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
