"""Supervised fine-tuning (and continued pre-training): setup -> train -> save, readable top to bottom.

One place builds batches (`common.micro_batches_for_step` + `common.collate`), one place computes the
loss (`forward_loss`), one place steps (`optimizer_step`). Batches are a pure function of the step, so
a resumed run sees exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from tunery.config.schema import TrainConfig
from tunery.errors import TuneryError
from tunery.models import adapters
from tunery.runfolder import RunFolder
from tunery.trainers import checkpoint as ckpt
from tunery.trainers import common
from tunery.trainers import distributed as ddp
from tunery.trainers import fsdp
from tunery.trainers.forward import forward_loss
from tunery.trainers.progress import Progress


@dataclass
class LoopState:
    """Everything about the loop that is not a tensor; saved as JSON in each checkpoint."""

    step: int = 0  # optimizer steps done
    best_val: float | None = None
    best_step: int | None = None  # step of the best watched figure (val loss, or grader score)
    best_score: float | None = None  # best mean of the first grader (eval.graders), if any
    evals_since_best: int = 0
    bad_steps: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    elapsed: float = 0.0
    last_loss: float | None = None


@dataclass
class Setup:
    cfg: TrainConfig
    model: torch.nn.Module
    tokenizer: object
    train: list
    val: list
    optimizer: torch.optim.Optimizer
    plan: common.StepPlan
    eval_every: int
    save_every: int
    dist: ddp.Dist = ddp.SINGLE
    grader_items: list = field(default_factory=list)  # the seeded sample answered during training
    graders: list = field(default_factory=list)


def setup(cfg: TrainConfig, model, tokenizer, train: list, val: list, dist: ddp.Dist = ddp.SINGLE) -> Setup:
    """Make the model trainable (sharded with `training.fsdp` on several processes), build the
    optimizer, the step plan and the grader sample."""
    model = adapters.prepare_trainable(model, cfg)
    if cfg.training.fsdp and dist.active:
        model = fsdp.shard(model, dist)  # before the optimizer, so its moments are shards too
    model.train()
    tc = cfg.training
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach=False keeps the update order fixed, which exact resume relies on.
    optimizer = torch.optim.AdamW(params, lr=cfg.peak_lr(), betas=tc.betas,
                                  weight_decay=tc.weight_decay, foreach=False)
    # batch_size is per process: N processes step through the examples N x batch_size at a time.
    plan = common.make_plan(len(train), tc.batch_size * dist.world, tc.grad_accum, tc.epochs, tc.max_steps, tc.seed)
    eval_every = tc.eval_every or max(1, plan.total_steps // 10)
    save_every = tc.save_every or eval_every
    items, graders = grader_sample(cfg)
    return Setup(cfg, model, tokenizer, train, val, optimizer, plan, eval_every, save_every, dist, items, graders)


def grader_sample(cfg: TrainConfig) -> tuple[list, list]:
    """The examples and graders scored during training (none without `eval.graders`)."""
    if not cfg.eval.graders:
        return [], []
    from tunery.eval import during_training as during

    items = during.eval_sample(cfg)
    if not items:
        raise TuneryError(
            "eval.graders is set but there are no examples to score during training",
            why="graders answer validation examples, and this run has none",
            fix="set data.validation, data.val_split or eval.data",
        )
    return items, during.graders_of(cfg)


def watches_grader(s: Setup) -> bool:
    return s.cfg.eval.early_stopping_on == "grader"


def batches_for_step(s: Setup, step: int) -> list[dict[str, torch.Tensor]]:
    """The micro-batches of optimizer step `step`, built in one place.

    Packed micro-batches are cut into pieces of at most `training.chunk_tokens` tokens: the gradient
    is the same sum over the step's trained tokens, but only one piece's activations live at a time."""
    tc = s.cfg.training
    rows = [[s.train[i] for i in ddp.shard(idx, s.dist)] for idx in common.micro_batches_for_step(s.plan, step)]
    if tc.packing:
        rows = [piece for r in rows for piece in common.split_by_tokens(r, tc.chunk_tokens)]
    return [common.make_batch(r, s.tokenizer.pad_token_id, tc.packing) for r in rows]


def loss_function(s: Setup):
    """`forward_loss`, or its variant through the root's forward for a sharded model."""
    return fsdp.forward_loss if fsdp.is_sharded(s.model) else forward_loss


def idle_passes(s: Setup, done: int) -> list[dict[str, torch.Tensor]]:
    """Batches for the passes a sharded rank runs to keep step with the others (none unsharded).

    Any example will do: their loss is multiplied by zero (training) or dropped (evaluation)."""
    if not fsdp.is_sharded(s.model):
        return []
    filler = common.make_batch(s.train[:1], s.tokenizer.pad_token_id, s.cfg.training.packing)
    return [filler] * fsdp.passes_to_match(done, s.dist)


def accumulate(s: Setup, step: int) -> tuple[float, int, int]:
    """Forward and backward every micro-batch of `step`; gradients are normalised by the step's
    trained tokens, so 1 x 8 and 8 x 1 give the same update. Returns (mean loss, trained, tokens)."""
    batches = [b for b in batches_for_step(s, step) if b["input_ids"].numel()]
    total_trained = int(ddp.sum_over_ranks(sum(common.count_trained(b) for b in batches), s.dist))
    fillers = idle_passes(s, len(batches))  # agreed on before any pass: the agreement is a collective too
    loss_total, tokens = 0.0, 0
    loss_fn = loss_function(s)
    for batch in batches:
        loss_sum, _ = loss_fn(s.model, batch)
        (loss_sum / max(total_trained, 1)).backward()
        loss_total += float(loss_sum.detach())
        tokens += common.count_tokens(batch)
    for batch in fillers:
        loss_sum, _ = loss_fn(s.model, batch)
        (loss_sum * 0.0).backward()  # gradients of exactly zero: only the collectives matter
    loss_total = ddp.sum_over_ranks(loss_total, s.dist)
    tokens = int(ddp.sum_over_ranks(tokens, s.dist))
    return loss_total / max(total_trained, 1), total_trained, tokens


def optimizer_step(s: Setup, step: int, loss: float) -> tuple[bool, float, float]:
    """Clip and apply the update unless the loss or gradient is NaN/inf. Returns (applied, lr, grad norm)."""
    tc = s.cfg.training
    params = [p for p in s.model.parameters() if p.requires_grad]
    if not fsdp.is_sharded(s.model):  # sharded: FSDP's reduce-scatter summed them during backward
        ddp.sum_gradients(params, s.dist)
    max_norm = tc.max_grad_norm if tc.max_grad_norm is not None else float("inf")
    # Sharded gradients are DTensors: the norm is then over the whole gradient, the same on every rank.
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    warmup = math.ceil(tc.warmup_ratio * s.plan.total_steps)
    lr = s.cfg.peak_lr() * common.lr_factor(step, s.plan.total_steps, warmup, tc.scheduler)
    applied = math.isfinite(loss) and math.isfinite(grad_norm)
    if applied:
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    return applied, lr, grad_norm


@torch.no_grad()
def evaluate(s: Setup) -> float | None:
    """Mean loss per trained token over the whole validation set (None without one)."""
    if not s.val:
        return None
    s.model.eval()
    total, count = 0.0, 0
    bs = s.cfg.training.batch_size
    mine = ddp.shard(list(range(len(s.val))), s.dist)
    fillers = idle_passes(s, math.ceil(len(mine) / bs))
    loss_fn = loss_function(s)
    for start in range(0, len(mine), bs):
        rows = [s.val[i] for i in mine[start:start + bs]]
        loss_sum, n = loss_fn(s.model, common.make_batch(rows, s.tokenizer.pad_token_id, s.cfg.training.packing))
        total, count = total + float(loss_sum), count + n
    for batch in fillers:
        loss_fn(s.model, batch)
    s.model.train()
    total, count = ddp.sum_over_ranks(total, s.dist), ddp.sum_over_ranks(count, s.dist)
    return total / count if count else None


def resume(s: Setup, folder: Path) -> LoopState:
    """Load weights, optimizer moments, RNG streams and loop state from a complete checkpoint.

    A sharded run reads the tensors on rank 0 only and broadcasts them into every rank's shards."""
    if not fsdp.is_sharded(s.model):
        weights, extra, state = ckpt.load_checkpoint(folder)
        adapters.load_trainable_state(s.model, weights)
        ckpt.restore_training_state(folder, s.optimizer, extra, state, rank=s.dist.rank)
        return LoopState(**state["loop"])
    weights, extra, state = ckpt.load_checkpoint(folder, tensors=s.dist.is_main)
    fsdp.load_weights(s.model, weights, s.dist)
    ckpt.restore_training_state(folder, s.optimizer, extra, state, rank=s.dist.rank,
                                load_optimizer=lambda saved: fsdp.load_optimizer(s.model, s.optimizer, saved, s.dist))
    return LoopState(**state["loop"])


def save(s: Setup, run: RunFolder, st: LoopState) -> None:
    """Write a checkpoint for the current step and drop old ones (never the best, never the newest).

    Every rank takes part (their RNG streams are gathered, sharded tensors too); rank 0 writes."""
    rank_rng = ddp.gather_rng_states(s.dist) if s.dist.active else None
    if fsdp.is_sharded(s.model):
        weights, optimizer = fsdp.full_weights(s.model), fsdp.full_optimizer_state(s.model, s.optimizer, s.dist)
    else:
        weights, optimizer = adapters.trainable_state(s.model), s.optimizer
    if s.dist.is_main:
        ckpt.save_checkpoint(run.checkpoints, st.step, weights, optimizer, asdict(st), rank_rng=rank_rng)
        protect = {st.best_step} if st.best_step is not None else set()
        ckpt.rotate(run.checkpoints, s.cfg.training.keep_checkpoints, protect)
    ddp.barrier(s.dist)


def after_eval(s: Setup, run: RunFolder, st: LoopState, val: float, progress: Progress) -> bool:
    """Record a validation loss; returns True when early stopping (watching the loss) says stop."""
    improved = st.best_val is None or val < st.best_val
    if improved:
        st.best_val = val
    progress.last_val = val
    run.append_metrics({"kind": "eval", "step": st.step, "val_loss": val,
                        "val_ppl": math.exp(min(val, 50.0)), "best": improved})
    progress.write(f"step {st.step}: validation loss {val:.4f}" + (" (best)" if improved else ""))
    return not watches_grader(s) and _count_toward_patience(s, st, improved)


def after_grader(s: Setup, run: RunFolder, st: LoopState, scores: dict, progress: Progress) -> bool:
    """Record a grader scoring; returns True when early stopping (watching the grader) says stop.

    Higher is better; a new best must beat the old one by more than `eval.min_delta`."""
    from tunery.eval.during_training import metrics_record

    score = scores["score"]
    improved = st.best_score is None or score > st.best_score + s.cfg.eval.min_delta
    if improved:
        st.best_score = score
    run.append_metrics(metrics_record(st.step, scores) | {"best": improved})
    label = s.graders[0].label
    progress.write(f"step {st.step}: {label} {score:.3f} on {scores['n']} examples" + (" (best)" if improved else ""))
    return watches_grader(s) and _count_toward_patience(s, st, improved)


def _count_toward_patience(s: Setup, st: LoopState, improved: bool) -> bool:
    """Move the best step or the count of evaluations since it; True when patience ran out."""
    if improved:
        st.best_step, st.evals_since_best = st.step, 0
    else:
        st.evals_since_best += 1
    patience = s.cfg.training.early_stopping_patience
    return patience is not None and st.evals_since_best >= patience


def score_graders(s: Setup) -> dict:
    """Answer the grader sample greedily with the current weights and score it.

    Every rank answers the same sample: the weights are identical after the all-reduce, so the
    scores and the stopping decision are too, without another collective. Sharded, the ranks also
    run the same forward passes in step, which FSDP's all-gathers need."""
    from tunery.eval.during_training import score_sample

    return score_sample(s.model, s.tokenizer, s.grader_items, s.graders, s.cfg.eval.max_new_tokens,
                        batch_size=s.cfg.training.batch_size)


def train(s: Setup, run: RunFolder, st: LoopState, should_stop: Callable[[], bool]) -> tuple[LoopState, str]:
    """The loop. Returns the final state and why it ended: finished, early_stopped or interrupted."""
    tc = s.cfg.training
    if s.dist.is_main:
        run.root.mkdir(parents=True, exist_ok=True)
    else:  # only rank 0 writes metrics and prints
        run = RunFolder(run.root, writable=False)
    progress = Progress(s.plan.total_steps, st.step, st.elapsed, enabled=s.dist.is_main)
    reason = "finished"
    try:
        while st.step < s.plan.total_steps:
            loss, trained, tokens = accumulate(s, st.step)
            applied, lr, grad_norm = optimizer_step(s, st.step, loss)
            st.step += 1
            st.bad_steps = 0 if applied else st.bad_steps + 1
            if not applied:
                progress.write(f"step {st.step}: loss {loss} / grad norm {grad_norm}: not finite, update skipped")
                if st.bad_steps >= tc.max_bad_steps:
                    raise TuneryError(
                        f"training stopped at step {st.step}: {st.bad_steps} steps in a row had a NaN/inf loss or gradient",
                        why="the updates were skipped, so the saved weights are the last finite ones",
                        fix="lower training.lr, keep training.max_grad_norm set, or check the data",
                    )
            st.tokens, st.trained_tokens = st.tokens + tokens, st.trained_tokens + trained
            st.last_loss = loss if applied else st.last_loss
            st.elapsed = progress.elapsed()
            progress.count(tokens)
            progress.step_done(st.step, loss, lr)
            if st.step % tc.log_every == 0 or st.step == s.plan.total_steps:
                log_step(run, progress, st, loss, lr, grad_norm, trained)
            stop_early = False
            if st.step % s.eval_every == 0 or st.step == s.plan.total_steps:
                val = evaluate(s)
                if val is not None:
                    stop_early = after_eval(s, run, st, val, progress)
            if s.grader_items and grader_due(s, st.step):
                stop_early = after_grader(s, run, st, score_graders(s), progress) or stop_early
            is_best = st.best_step == st.step
            interrupted = ddp.any_rank(should_stop(), s.dist)
            if st.step % s.save_every == 0 or is_best or interrupted or stop_early:
                save(s, run, st)
            if stop_early:
                reason = "early_stopped"
                progress.write(f"early stopping at step {st.step}: {describe_best(s, st, since=True)}")
                break
            if interrupted:
                reason = "interrupted"
                break
    finally:
        progress.close()
    return st, reason


def grader_due(s: Setup, step: int) -> bool:
    from tunery.eval.during_training import due

    return due(s.cfg, step, s.plan.total_steps, s.eval_every)


def describe_best(s: Setup, st: LoopState, since: bool = False) -> str:
    """'best validation loss 0.1234 at step 8' (or the grader's score when early stopping watches it)."""
    if watches_grader(s) and st.best_score is not None:
        best = f"best {s.graders[0].label} {st.best_score:.3f} at step {st.best_step}"
        what = "grader score"
    else:
        best = f"best validation loss {st.best_val:.4f} at step {st.best_step}" if st.best_val is not None else "no validation loss"
        what = "validation loss"
    return f"no better {what} in {st.evals_since_best} evaluations ({best})" if since else best


def log_step(run: RunFolder, progress: Progress, st: LoopState, loss: float, lr: float,
             grad_norm: float, trained: int) -> None:
    tok_s = progress.tokens_per_second()
    run.append_metrics({"kind": "train", "step": st.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                        "trained_tokens": trained, "tokens_per_s": round(tok_s, 1),
                        "elapsed_s": round(st.elapsed, 2)})
    progress.log_line(st.step, loss, lr, tok_s)


def restore_best(s: Setup, run: RunFolder, st: LoopState) -> None:
    """Put the best weights (lowest validation loss, or highest grader score) back before the final save.

    Unsharded, rank 0 alone calls this; sharded, every rank does (rank 0 reads, all load their shards)."""
    if st.best_step is None or st.best_step == st.step:
        return
    folder = ckpt.step_dir(run.checkpoints, st.best_step)
    if fsdp.is_sharded(s.model):
        weights, _, _ = ckpt.load_checkpoint(folder, tensors=s.dist.is_main)
        fsdp.load_weights(s.model, weights, s.dist)
        return
    weights, _, _ = ckpt.load_checkpoint(folder)
    adapters.load_trainable_state(s.model, weights)
