"""Helpers for the studio tests: run folders of the tiny model, a form that trains one, and waiting."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from cli_helpers import write_chat_jsonl
from eval_helpers import make_run_folder
from tunery.runfolder import write_marker

EVAL = {"graders": ["exact", "json"], "primary": "exact", "best": "tuned", "n_examples": 4,
        "systems": [{"system": {"name": "tuned"}, "scores": {"exact": {"mean": 0.75}, "json": {"mean": 1.0}},
                     "loss": {"loss": 0.42}},
                    {"system": {"name": "base zero-shot"}, "scores": {"exact": {"mean": 0.0}, "json": {"mean": 0.25}},
                     "loss": {"loss": 2.5}}]}


def make_studio_runs(folder: Path, model_dir: Path) -> Path:
    """runs/alpha (evaluated: eval.json + report.html) and runs/beta (lr 5e-3, rank 4): finished LoRA runs
    of the tiny model, marked as `tunery train` marks its folders. Returns the runs folder."""
    alpha = make_run_folder(folder, model_dir, name="alpha", seed=0)
    beta = make_run_folder(folder, model_dir, name="beta", seed=1)
    for root in (alpha, beta):
        write_marker(root, "train")
    with open(alpha / "metrics.jsonl", "a") as fh:  # a grader watched during training (eval.graders)
        fh.write("".join(json.dumps({"kind": "grader", "step": step, "exact": score, "best": True}) + "\n"
                         for step, score in ((4, 0.25), (8, 0.5))))
    (alpha / "eval.json").write_text(json.dumps(EVAL))
    (alpha / "report.html").write_text("<html><body><h1 id='report'>eval report of alpha</h1></body></html>")
    config = yaml.safe_load((beta / "config.yaml").read_text())
    config["training"]["lr"] = 5.0e-3
    (beta / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    metrics = [json.loads(line) for line in (beta / "metrics.jsonl").read_text().splitlines()]
    (beta / "metrics.jsonl").write_text("".join(
        json.dumps({**m, "loss": m["loss"] * 0.5} if "loss" in m else m) + "\n" for m in metrics))
    return folder / "runs"


def tiny_form(folder: Path, model_dir: Path, name: str, steps: int, save_every: int = 1, eval_every: int = 2) -> dict:
    """The values of the studio's new-run form for a LoRA run of the tiny model on a small chat set."""
    train = write_chat_jsonl(folder / f"{name}-train.jsonl", 24)
    val = write_chat_jsonl(folder / f"{name}-val.jsonl", 6, offset=100)
    return {"base_model": str(model_dir), "data.train": str(train), "data.validation": str(val),
            "data.max_length": "64", "lora.rank": "4", "lora.alpha": "8", "training.max_steps": str(steps),
            "training.batch_size": "2", "training.lr": "1e-3", "training.eval_every": str(eval_every),
            "training.save_every": str(save_every), "training.threads": "1", "training.preflight": "false",
            "output.name": name}


def wait_for(condition, timeout: float = 240, what: str = "the condition", every: float = 0.2):
    """Poll `condition()` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)
