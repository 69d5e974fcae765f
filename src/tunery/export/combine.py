"""`tunery combine`: several adapters of one base model made into one new adapter run folder.

The arithmetic is PEFT's `add_weighted_adapter` (linear, cat, ties, dare_linear, dare_ties); what is
ours is checking first that the parts can be combined at all, and saying why not when they cannot:
the same base model, the same adapter kind (a QLoRA adapter learned on a 4-bit base), the same
tokenizer and chat template, the same adapted modules, equal ranks where the method needs them, and
no DoRA magnitudes or trained whole modules (which have no meaningful weighted sum).

What each method does per adapted layer, with w_i the user's weight and s_i the part's scale:
- cat:      A = [w_1 s_1 A_1; w_2 s_2 A_2; ...], B = [B_1, B_2, ...]: the update is exactly
            sum_i w_i s_i B_i A_i, at rank sum(r_i);
- linear:   A = sum_i sqrt(w_i s_i) A_i, B = sum_i sqrt(w_i s_i) B_i (cross terms included), rank r;
- ties / dare_ties / dare_linear: the same per-factor sum after pruning each factor to `density`
  (by magnitude for ties, at random and rescaled for dare; seeded) and, for the *ties* methods,
  keeping only entries that agree with the elected sign (Yadav et al. 2023; Yu et al. 2023).

`load_side_by_side` puts several adapters of one base on one model, to switch per request.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Callable

import torch

from tunery.config.load import to_yaml
from tunery.errors import TuneryError
from tunery.export.lora_math import split_adapter
from tunery.export.merge import ADAPTER_KINDS, read_adapter
from tunery.atomic import atomic_dir
from tunery.runfolder import RunFolder, check_output, portable_path, write_marker, write_text_atomic

METHODS = ("linear", "cat", "ties", "dare_linear", "dare_ties")
SAME_RANK = {"linear", "ties", "dare_linear", "dare_ties"}
NEEDS_DENSITY = {"ties", "dare_linear", "dare_ties"}


def _tokenizer_fingerprint(run: RunFolder) -> str:
    digest = hashlib.sha256()
    for name in ("tokenizer.json", "chat_template.jinja"):
        path = run.tokenizer / name
        digest.update(path.read_bytes() if path.is_file() else b"-")
    return digest.hexdigest()


def describe_part(run_dir: Path) -> dict:
    """What the checks compare, read from one run folder."""
    from tunery.inference import read_run_info

    run = RunFolder(run_dir)
    info = read_run_info(run.root)
    if info.get("adapter", "lora") not in ADAPTER_KINDS or not (run.adapter / "adapter_config.json").is_file():
        raise TuneryError(f"{run.root} has no final LoRA adapter", why=f"adapter kind: {info.get('adapter')}",
                          fix="combine finished LoRA or QLoRA runs (full fine-tuning runs have no adapter)")
    tensors, config = read_adapter(run.adapter)
    factors, whole = split_adapter(tensors)
    return {"run": str(run.root), "base_model": info["base_model"], "adapter": info.get("adapter", "lora"),
            "rank": config["r"], "ranks": sorted({int(f["A"].shape[0]) for f in factors.values()}),
            "modules": sorted(factors), "dora": bool(config.get("use_dora")),
            "whole_modules": sorted(whole), "tokenizer": _tokenizer_fingerprint(run)}


def check_compatible(parts: list[dict], method: str, weights: list[float], density: float | None) -> None:
    """Raise a TuneryError naming the first reason these parts cannot be combined with `method`."""
    if method not in METHODS:
        raise TuneryError(f"unknown combination method '{method}'", fix=f"use one of {', '.join(METHODS)}")
    if len(parts) < 2:
        raise TuneryError("combine needs at least two runs")
    if len(weights) != len(parts):
        raise TuneryError(f"{len(weights)} weights for {len(parts)} runs", fix="give one --weights value per run")
    if method in NEEDS_DENSITY and not (density is not None and 0 < density <= 1):
        raise TuneryError(f"--density must be in (0, 1] for {method}", why=f"got {density}")
    first = parts[0]
    for part in parts[1:]:
        for key, what, fix in (
            ("base_model", "base models", "combine adapters trained on the same base model"),
            ("adapter", "adapter kinds", "combine LoRA with LoRA and QLoRA with QLoRA (different bases)"),
            ("tokenizer", "tokenizers or chat templates", "combine runs that share a tokenizer/ and template"),
            ("modules", "adapted modules", "train the parts with the same lora.target_modules"),
        ):
            if part[key] != first[key]:
                detail = _difference(first[key], part[key]) if key == "modules" else f"{first[key]!r} vs {part[key]!r}"
                raise TuneryError(f"{first['run']} and {part['run']} have different {what}", why=detail, fix=fix)
    for part in parts:
        if part["dora"]:
            raise TuneryError(f"{part['run']} is a DoRA adapter; its magnitude vectors have no weighted sum",
                              fix="merge DoRA runs one at a time (tunery merge), or combine plain LoRA runs")
        if part["whole_modules"]:
            raise TuneryError(f"{part['run']} trains whole modules ({', '.join(part['whole_modules'])}), "
                              "which cannot be combined", fix="combine runs without lora.modules_to_save")
    ranks = {r for part in parts for r in part["ranks"]}
    if method in SAME_RANK and len(ranks) > 1:
        raise TuneryError(f"{method} needs adapters of one rank; these have ranks {sorted(ranks)}",
                          fix="use --method cat (any ranks; the result has their sum), or retrain with one lora.rank")


def _difference(a: list[str], b: list[str]) -> str:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    return f"only in the first: {only_a[:3]}{'...' if len(only_a) > 3 else ''}; only in the other: {only_b[:3]}"


def load_side_by_side(run_dirs: list[str | Path], names: list[str] | None = None):
    """One base model with each run's adapter loaded under its own name; `model.set_adapter(name)`
    switches between them per request. Returns (PeftModel, names)."""
    from peft import PeftModel

    from tunery.inference import read_run_info
    from tunery.models.quant import load_base_for_run

    runs = [RunFolder(Path(r)) for r in run_dirs]
    parts = [describe_part(r.root) for r in runs]
    for part in parts[1:]:
        if (part["base_model"], part["adapter"]) != (parts[0]["base_model"], parts[0]["adapter"]):
            raise TuneryError(f"{part['run']} was trained on another base than {parts[0]['run']}")
    names = names or [r.root.resolve().name for r in runs]
    if len(set(names)) != len(names):
        raise TuneryError("two runs would get the same adapter name", fix="pass distinct names")
    base = load_base_for_run(read_run_info(runs[0].root), runs[0].root)
    model = PeftModel.from_pretrained(base, str(runs[0].adapter), adapter_name=names[0])
    for run, name in zip(runs[1:], names[1:]):
        model.load_adapter(str(run.adapter), adapter_name=name)
    return model.eval(), names


def combine_runs(run_dirs: list[str | Path], method: str, out_dir: str | Path, weights: list[float] | None = None,
                 density: float | None = None, seed: int = 0, overwrite: bool = False,
                 log: Callable[[str], None] = print) -> dict:
    """Combine the adapters of `run_dirs` into a new adapter run folder `out_dir`; returns its run.json."""
    weights = list(weights) if weights else [1.0] * len(run_dirs)
    if method in NEEDS_DENSITY and density is None:
        density = 0.5
    parts = [describe_part(Path(r)) for r in run_dirs]
    check_compatible(parts, method, weights, density)
    out = RunFolder(check_output(out_dir, "combine", overwrite))  # before any model is loaded
    log(f"combining {len(parts)} adapters with {method} (weights {weights}) ...")
    model, names = load_side_by_side(run_dirs, names=[f"part{i}" for i in range(len(parts))])
    torch.manual_seed(seed)  # dare_* prune at random
    try:
        model.add_weighted_adapter(names, weights, "default", combination_type=method,
                                   density=density, majority_sign_method="total")
    except ValueError as exc:
        raise TuneryError("PEFT refused to combine these adapters", why=str(exc)) from exc
    config = model.peft_config["default"]
    # The parts' scales are folded into the new factors, so the new adapter must scale by exactly 1;
    # PEFT sets alpha = r, which rsLoRA would turn into sqrt(r).
    config.use_rslora, config.lora_alpha = False, config.r
    for name in names:
        model.delete_adapter(name)
    return _write_run(model, parts, out, method, weights, density, seed, log)


def _write_run(model, parts: list[dict], out: RunFolder, method: str, weights: list[float],
               density: float | None, seed: int, log) -> dict:
    from tunery.runcard import write_adapter_card

    first = RunFolder(Path(parts[0]["run"]))
    config = first.read_config()
    with atomic_dir(out.root) as tmp:  # the earlier output (if any) stays until this one is complete
        staged = RunFolder(tmp)
        write_marker(tmp, "combine")
        model.save_pretrained(staged.adapter, safe_serialization=True)
        shutil.copytree(first.tokenizer, staged.tokenizer)
        if config is not None:
            train = [f for part in parts for f in _train_files(Path(part["run"]))]
            combined = config.model_copy(update={"data": config.data.model_copy(update={"train": train})})
            write_text_atomic(staged.config, to_yaml(combined))
        tensors, adapter_config = read_adapter(staged.adapter)
        info = staged.update_info(
            base_model=portable_path(parts[0]["base_model"], out.root), adapter=parts[0]["adapter"],
            method="combine", status="finished",
            combined_from=[portable_path(p["run"], out.root) for p in parts],
            combination={"method": method, "weights": weights, "density": density, "seed": seed},
            rank=adapter_config["r"], trainable_params=sum(t.numel() for t in tensors.values()))
        write_adapter_card(staged.root, name=out.root.name)
    log(f"wrote {out.root} (rank {adapter_config['r']}, {info['trainable_params']:,} adapter parameters)")
    return info


def _train_files(run_dir: Path) -> list[str]:
    config = RunFolder(run_dir).read_config()
    return list(config.data.train) if config is not None else []
