"""`tunery train`: config -> run folder -> recipe -> final weights, with resume and clean interruption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
import yaml

from tunery import __version__, faults
from tunery.config.load import describe, load_config, to_yaml, validate
from tunery.config.schema import TrainConfig
from tunery.errors import TuneryError
from tunery.models import adapters
from tunery.failures import recorded_failure
from tunery.runfolder import (RunFolder, check_run_target, clear_run_folder, create_run_folder, portable_path,
                              write_text_atomic)
from tunery.trainers import checkpoint as ckpt
from tunery.trainers import distributed as ddp
from tunery.trainers import fsdp, report, sft

EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


def run_dir_for(cfg: TrainConfig) -> Path:
    return Path(cfg.output.dir) / (cfg.output.name or "run")


def run_training(cfg: TrainConfig, root: Path, resume: bool = False,
                 should_stop: Callable[[], bool] = lambda: False, log: Callable[[str], None] = print,
                 dist: ddp.Dist = ddp.SINGLE) -> dict:
    """Train `cfg` into the run folder `root`; returns run.json's content.

    With `resume`, continue from the newest complete checkpoint in `root` (or start if there is none).
    In a multi-process run every rank calls this; rank 0 alone writes files and prints.
    """
    run = RunFolder(root, writable=dist.is_main)
    log = log if dist.is_main else (lambda _text: None)
    if cfg.training.fsdp and not dist.active:
        log("training.fsdp is set but this run has one process: training unsharded")
    s = prepare(cfg, dist, log, cache_dir=root / "cache")
    if fsdp.is_sharded(s.model):  # the preflight estimate does not model sharded weights yet
        log(f"FSDP: weights, gradients and AdamW moments sharded over {dist.world} processes; "
            "no preflight memory check")
    elif cfg.training.preflight:
        preflight(s, dist, log)
    faults.arm_nan(s.model, s.optimizer)  # inert unless TUNERY_FAULT=nan:... (after preflight's probe passes)
    torch.manual_seed(cfg.training.seed + dist.rank)  # each rank its own dropout stream, all reproducible
    st = _start_or_resume(s, run, cfg, resume, log)
    trainable, total = adapters.count_parameters(s.model)
    train, val = s.train, s.val
    _update_info(run,base_model=portable_path(cfg.base_model, root), adapter=cfg.adapter, dtype=cfg.dtype, method=cfg.method,
                    status="running", tunery_version=__version__, total_steps=s.plan.total_steps,
                    train_examples=len(train), val_examples=len(val),
                    trainable_params=trainable, total_params=total)
    log(f"{len(train)} training / {len(val)} validation examples; {s.plan.total_steps} steps; "
        f"{trainable:,} of {total:,} parameters trainable")
    st, reason = sft.train(s, run, st, should_stop)
    from tunery.plan import peak_mb

    figures = dict(step=st.step, best_step=st.best_step, best_val_loss=st.best_val, best_score=st.best_score,
                   watched=cfg.eval.early_stopping_on, tokens=st.tokens,
                   trained_tokens=st.trained_tokens, elapsed_s=round(st.elapsed, 1), final_loss=st.last_loss,
                   peak_memory_mb=round(peak_mb(torch.cuda.is_available()), 1))
    if reason == "interrupted":
        log(f"stopped at step {st.step}; checkpoint written. Continue with --resume.")
        return _update_info(run, status="stopped", **figures)
    sharded = fsdp.is_sharded(s.model)
    full_state = _best_full_state(s, run, st) if sharded else None
    if dist.is_main:
        if not sharded:
            sft.restore_best(s, run, st)
        target = report.save_final(s.model, s.tokenizer, run, cfg.adapter, state_dict=full_state)
        info = run.update_info(status="finished", stop_reason=reason, **figures)
        report.write_summary(run, info)
        log(f"saved {target} ({sft.describe_best(s, st)})")
    ddp.barrier(dist)
    return run.read_info()


def _best_full_state(s: sft.Setup, run: RunFolder, st: sft.LoopState) -> dict:
    """A sharded run's final weights, gathered: every rank restores the best and sends its shards to
    rank 0, which gets the full state dict (the other ranks an empty one)."""
    sft.restore_best(s, run, st)
    return fsdp.full_model_state(s.model)


def prepare(cfg: TrainConfig, dist: ddp.Dist = ddp.SINGLE, log: Callable[[str], None] = print,
            cache_dir: Path | None = None) -> sft.Setup:
    """Load tokenizer and model, render the data, and set up the recipe (what `train` and `plan` share).

    With `cache_dir` (a run's `cache/`), rendered data is reused when nothing it depends on changed;
    only rank 0 writes it."""
    from tunery.data.dataset import build_datasets
    from tunery.data.render import chat_template_of
    from tunery.models.load import load_tokenizer
    from tunery.models.quant import load_for_training

    if cfg.training.threads:
        torch.set_num_threads(cfg.training.threads)
    started = time.monotonic()
    tokenizer = load_tokenizer(cfg.base_model)
    # Pin the template used for rendering, so the saved tokenizer/ carries exactly that one.
    tokenizer.chat_template = chat_template_of(tokenizer)
    model = load_for_training(cfg)  # load_model(base, dtype), or a 4-bit base for adapter: qlora
    log(f"loaded {cfg.base_model} in {time.monotonic() - started:.1f} s")
    train, val, warnings = build_datasets(cfg, tokenizer, cache_dir=cache_dir, write_cache=dist.is_main)
    for warning in warnings:
        log(f"warning: {warning}")
    return sft.setup(cfg, model, tokenizer, train, val, dist)


def preflight(s: sft.Setup, dist: ddp.Dist, log: Callable[[str], None]) -> None:
    """Refuse a run whose estimated peak memory does not fit, before any step is spent."""
    from tunery.plan import estimate, format_estimate

    est = estimate(s)
    log(f"preflight: estimated peak {est.peak_mb:.0f} MiB of {est.available_mb:.0f} MiB available, "
        f"~{est.seconds_per_step:.2f} s per step")
    if ddp.any_rank(not est.fits, dist):
        raise TuneryError(
            "this run would not fit in memory:\n" + format_estimate(est),
            fix="apply one of the suggestions above, or set training.preflight=false to try anyway",
        )


def _update_info(run: RunFolder, **fields) -> dict:
    return run.update_info(**fields) if run.writable else run.read_info()


def _start_or_resume(s: sft.Setup, run: RunFolder, cfg: TrainConfig, resume: bool, log) -> sft.LoopState:
    latest = ckpt.latest_checkpoint(run.checkpoints) if resume else None
    if latest is None:
        if run.writable:
            run.root.mkdir(parents=True, exist_ok=True)
            write_text_atomic(run.config, to_yaml(cfg))
            if run.metrics.exists():
                run.metrics.unlink()
        return sft.LoopState()
    st = sft.resume(s, latest)
    if run.writable:
        run.truncate_metrics(st.step, log)
    log(f"resumed from {latest} (step {st.step} of {s.plan.total_steps})")
    return st


@contextmanager
def interruptible():
    """SIGINT/SIGTERM set a flag that the loop reads after each step, so it can checkpoint and exit."""
    caught: list[int] = []

    def handler(signum, _frame):
        if caught:  # a second signal: stop now
            raise KeyboardInterrupt
        caught.append(signum)
        print(f"\nsignal {signal.Signals(signum).name}: finishing this step, writing a checkpoint...", flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in EXIT_INTERRUPTED}
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def launch(config_path: str | Path, overrides: list[str], resume: bool, nproc: int) -> int:
    """Start `nproc` training processes on this machine through torchrun (torch.distributed.run)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "tunery.cli.main", "train", str(config_path), *overrides] + (["--resume"] if resume else [])
    print(f"launching {nproc} processes: {' '.join(command[1:])}", flush=True)
    with interruptible():  # the signal reaches the workers too; they checkpoint and exit
        return subprocess.call(command)


def train_from_config(config_path: str | Path, overrides: list[str], resume: bool = False,
                      overwrite: bool = False, nproc: int = 1) -> int:
    """The body of `tunery train`. Returns the process exit code.

    SIGINT/SIGTERM are caught from here on: from the config's loading to the final save, a signal ends
    the run with a checkpoint (after at least one step) and exit code 130/143."""
    with interruptible() as caught:
        return _train(config_path, overrides, resume, overwrite, nproc, caught)


def _train(config_path, overrides: list[str], resume: bool, overwrite: bool, nproc: int, caught: list) -> int:
    resolved = load_config(config_path, overrides)
    cfg = resolved.config
    root = run_dir_for(cfg)
    run = RunFolder(root)
    launching = nproc > 1 and "WORLD_SIZE" not in os.environ
    dist = ddp.SINGLE if launching else ddp.from_env()
    check_run_target(root, resume, overwrite)  # a folder tunery did not make is never used or deleted
    info = run.read_info()
    ddp.barrier(dist)  # every rank has read the folder's state before rank 0 changes it
    if root.exists() and overwrite:
        if dist.is_main:
            clear_run_folder(root)
        info = {}
    elif info and not resume:
        raise TuneryError(
            f"the run folder {root} already exists ({info.get('status', 'unknown')})",
            fix="add --resume to continue it, --overwrite to start again, or set output.name=NEW",
        )
    if resume and info:
        cfg = _saved_config(run, cfg, dist.is_main)
        if info.get("status") == "finished":
            if dist.is_main:
                print(f"{root} is already finished (step {info.get('step')}); nothing to do. "
                      "Use --overwrite to train again.")
            return 0
    elif dist.is_main:
        _print_resolved(resolved)
    if dist.is_main:
        create_run_folder(root, "train")
    if launching:
        return launch(config_path, overrides, resume, nproc)
    ddp.barrier(dist)
    try:
        with recorded_failure(run if dist.is_main else None):
            run_training(cfg, root, resume=resume, should_stop=lambda: bool(caught), dist=dist)
    finally:
        ddp.shutdown(dist)
    return EXIT_INTERRUPTED[caught[0]] if caught else 0


def _saved_config(run: RunFolder, requested: TrainConfig, speak: bool = True) -> TrainConfig:
    """Resume with the config the run started with; say which requested values differ from it."""
    saved = validate(yaml.safe_load(run.config.read_text()))
    old, new = saved.model_dump(mode="json"), requested.model_dump(mode="json")
    changed = [k for k in new if new[k] != old.get(k)]
    if changed and speak:
        print(f"warning: resuming with the run's saved config; ignoring changes in: {', '.join(changed)}")
    return saved


def _print_resolved(resolved) -> None:
    print("config (value  [source]):")
    for key, value, source in describe(resolved):
        print(f"  {key} = {value}  [{source}]")
