"""`tunery train`: config -> run folder -> recipe -> final weights, with resume and clean interruption."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from tunery import __version__, faults, tracking
from tunery.config.load import describe, load_config, to_yaml
from tunery.config.schema import TrainConfig
from tunery.errors import TuneryError
from tunery.models import adapters
from tunery.runfolder import (RunFolder, check_run_target, clear_run_folder, create_run_folder, keep_steps_up_to,
                              portable_path, write_text_atomic)
from tunery.trainers import checkpoint as ckpt
from tunery.trainers import distributed as ddp
from tunery.trainers.failed_run import recorded_failure
from tunery.trainers.replay import guard_text
from tunery.trainers import loop as training_loop
from tunery.trainers.methods import method_for
from tunery.trainers.preflight import estimate, format_estimate, peak_mb
from tunery.trainers.strategy import choose
from tunery.trainers.summary import write_summary

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
    tracking.check_installed(cfg)  # a missing extra is said before any model is loaded
    if cfg.training.fsdp and not dist.active:
        log("training.fsdp is set but this run has one process: training unsharded")
    loop = prepare(cfg, dist, log, cache_dir=root / "cache")
    if loop.strategy.name == "sharded":  # the preflight estimate does not model sharded weights yet
        log(f"FSDP: weights, gradients and AdamW moments sharded over {dist.world} processes; "
            "no preflight memory check")
    elif cfg.training.preflight:
        preflight(loop, log)
    faults.arm_nan(loop.model, loop.optimizer)  # inert unless TUNERY_FAULT=nan:... (after preflight's probe passes)
    torch.manual_seed(cfg.training.seed + dist.rank)  # each rank its own dropout stream, all reproducible
    st = _start_or_resume(loop, run, cfg, resume, log)
    if dist.is_main:
        save_answer_setup(run.root, cfg, loop.data, log)
    trainable, total = adapters.count_parameters(loop.model)
    _update_info(run, base_model=portable_path(cfg.base_model, root), adapter=cfg.adapter, dtype=cfg.dtype,
                 method=cfg.method, status="running", tunery_version=__version__,
                 total_steps=loop.total_steps, train_examples=len(loop.train), val_examples=len(loop.val),
                 trainable_params=trainable, total_params=total, guard=guard_text(cfg),
                 pid=os.getpid(), host=socket.gethostname())  # `tunery runs` tells running from killed
    log(f"{len(loop.train)} training / {len(loop.val)} validation examples; {loop.total_steps} steps; "
        f"{trainable:,} of {total:,} parameters trainable")
    if loop.watch.note:
        log(loop.watch.note)
    _log_layout(loop, log)
    tracked = _open_tracking(cfg, run, st.step, log)
    try:
        return _train_and_save(loop, replace(run, listeners=(tracked,)) if tracked else run, st, should_stop,
                               log, dist, tracked)
    except BaseException:
        tracked.finish("failed", {})
        raise


def _open_tracking(cfg: TrainConfig, run: RunFolder, resumed_step: int, log) -> tracking.Tracking:
    """The run's trackers (`tracking:`), on the process that writes files; none elsewhere."""
    if not run.writable or not cfg.tracking:
        return tracking.Tracking([])
    return tracking.open_tracking(cfg, run.root, to_yaml(cfg), resumed_step, log)


def _train_and_save(loop: training_loop.Loop, run: RunFolder, st: training_loop.LoopState, should_stop, log,
                    dist: ddp.Dist, tracked: tracking.Tracking) -> dict:
    """The loop, then the final weights of the best step, run.json and the summary."""
    cfg = loop.cfg
    st, reason = training_loop.train(loop, run, st, should_stop)
    figures = dict(step=st.step, best_step=st.best_step, best_val_loss=st.best_val, best_score=st.best_score,
                   watched=cfg.eval.early_stopping_on, tokens=st.tokens,
                   trained_tokens=st.trained_tokens, elapsed_s=round(st.elapsed, 1), final_loss=st.last_loss,
                   peak_memory_mb=round(peak_mb(torch.cuda.is_available()), 1))
    if reason == "interrupted":
        log(f"stopped at step {st.step}; checkpoint written. Continue with --resume.")
        tracked.finish("stopped", figures)
        return _update_info(run, status="stopped", **figures)
    training_loop.restore_best(loop, run, st)
    full_state = loop.strategy.final_state(loop.model)  # gathered on rank 0 when sharded, else None
    if dist.is_main:
        target = loop.method.final_artefact(loop.model, run, state_dict=full_state)
        finished = dict(status="finished", stop_reason=reason, **figures)
        write_summary(run, run.read_info() | finished)  # summary, plot and card first: a kill among them
        run.update_info(**finished)  # leaves a run that --resume completes; "finished" is the last write
        log(f"saved {target} ({loop.watch.describe_best(st)})")
        tracked.finish("finished", finished)
    ddp.barrier(dist)
    return run.read_info()


def save_answer_setup(root: Path, cfg: TrainConfig, data, log: Callable[[str], None]) -> None:
    """Keep in the run folder how it answers: the retrieval index of `data.retrieval` (retrieval.json)
    and the constraint of `eval.choices` / `eval.json_schema` (answers.json), so `generate`, `chat` and
    `eval` answer the way training did."""
    from tunery.constrain import resolve, save_constraint

    if data is not None and data.retrieval is not None:
        from tunery.data.retrieval_aug import save_index

        path = save_index(root, data.retrieval)
        log(f"retrieval: each prompt carries its {cfg.data.retrieval.k} nearest training examples "
            f"({cfg.data.retrieval.method}); index of {len(data.retrieval['documents'])} examples in {path}")
    constraint = resolve(cfg.eval.choices, cfg.eval.json_schema, data.labels if data is not None else None)
    if constraint is not None:
        log(f"answers constrained to {constraint.label} ({save_constraint(root, constraint)})")


def prepare(cfg: TrainConfig, dist: ddp.Dist = ddp.SINGLE, log: Callable[[str], None] = print,
            cache_dir: Path | None = None) -> training_loop.Loop:
    """Load tokenizer and model, load the method's data, and set up the loop (what `train` and `plan`
    share).

    With `cache_dir` (a run's `cache/`), rendered data is reused when nothing it depends on changed;
    only rank 0 writes it."""
    from tunery.data.render import chat_template_of
    from tunery.models.load import load_tokenizer

    if cfg.training.threads:
        torch.set_num_threads(cfg.training.threads)
    started = time.monotonic()
    tokenizer = load_tokenizer(cfg.base_model)
    # Pin the template used for rendering, so the saved tokenizer/ carries exactly that one.
    tokenizer.chat_template = chat_template_of(tokenizer)
    method = method_for(cfg, tokenizer)
    method.log = log
    model = method.load_base()  # the causal LM in cfg.dtype, or a 4-bit base for adapter: qlora
    log(f"loaded {cfg.base_model} in {time.monotonic() - started:.1f} s")
    data = method.load_data(cache_dir=cache_dir, write_cache=dist.is_main)
    for warning in data.warnings:
        log(f"warning: {warning}")
    return training_loop.setup(cfg, method, model, data, choose(cfg.training.fsdp, dist))


def preflight(loop: training_loop.Loop, log: Callable[[str], None]) -> None:
    """Refuse a run whose estimated peak memory does not fit, before any step is spent."""
    est = estimate(loop)
    log(f"preflight: estimated peak {est.peak_mb:.0f} MiB of {est.available_mb:.0f} MiB available, "
        f"~{est.seconds_per_step:.2f} s per step")
    if loop.strategy.any(not est.fits):
        raise TuneryError(
            "this run would not fit in memory:\n" + format_estimate(est),
            fix="apply one of the suggestions above, or set training.preflight=false to try anyway",
        )


def _update_info(run: RunFolder, **fields) -> dict:
    return run.update_info(**fields) if run.writable else run.read_info()


def _start_or_resume(loop: training_loop.Loop, run: RunFolder, cfg: TrainConfig, resume: bool,
                     log) -> training_loop.LoopState:
    latest = ckpt.latest_checkpoint(run.checkpoints) if resume else None
    if latest is None:
        if run.writable:
            run.root.mkdir(parents=True, exist_ok=True)
            write_text_atomic(run.config, to_yaml(cfg))
            if run.metrics.exists():
                run.metrics.unlink()
        return training_loop.LoopState()
    st = training_loop.resume(loop, latest)
    if run.writable:
        run.truncate_metrics(st.step, log)
        for name in loop.method.step_logs:  # e.g. RL's completions.jsonl: written again from here on
            keep_steps_up_to(run.root / name, st.step)
    log(f"resumed from {latest} (step {st.step} of {loop.total_steps})")
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
            signal.signal(sig, _exit_with_its_code if old == signal.SIG_DFL else old)


def hold_exit_signals() -> None:
    """Once `tunery train`'s work is done (every file complete and on disk), ignore SIGINT/SIGTERM while
    the process exits: Python's own shutdown puts the default handlers back (ignored signals stay
    ignored), and a signal then would kill the exit half-way (-15) instead of letting it end with the
    run's code. (Blocking them is not enough: threads started earlier keep them unblocked.)"""
    for sig in EXIT_INTERRUPTED:
        signal.signal(sig, signal.SIG_IGN)


def _exit_with_its_code(signum, _frame):
    """A signal after the run is over (its files are complete and on disk) while the process winds down:
    end at once with the signal's exit code, as during the run, rather than die by the signal (-15)."""
    os._exit(EXIT_INTERRUPTED[signum])


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
    saved = run.read_config()
    old, new = saved.model_dump(mode="json"), requested.model_dump(mode="json")
    changed = [k for k in new if new[k] != old.get(k)]
    if changed and speak:
        print(f"warning: resuming with the run's saved config; ignoring changes in: {', '.join(changed)}")
    return saved


def _print_resolved(resolved) -> None:
    print("config (value  [source]):")
    for key, value, source in describe(resolved):
        print(f"  {key} = {value}  [{source}]")


def _log_layout(loop: training_loop.Loop, log: Callable[[str], None], steps: int = 200) -> None:
    """What the method says of how the first steps' pieces go through the model (shared prefixes)."""
    first = range(min(steps, loop.plan.total_steps))
    # A generator: a method with nothing to say never builds the pieces.
    note = loop.method.pieces_note(p for step in first for p in training_loop.step_pieces(loop, step, dry=True))
    if note:
        log(f"{note}, over the first {len(first)} steps")
