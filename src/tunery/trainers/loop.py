"""The training loop that every method plugs into: setup -> train -> (resume) -> restore best.

One step: this process's pieces of the step's micro-batches (`step_pieces`), forward and backward of
each through the method's loss, divided by the units of the whole step (`accumulate`), then the update
with the NaN guard (`optimizer_step`). Validation, graders, the best step and early stopping go through
the `Watch`; checkpoints through the strategy. Batches are a pure function of the step, so a resumed run
sees exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from tunery.config.schema import TrainConfig
from tunery.data import batching
from tunery.data.render import Datasets
from tunery.errors import TuneryError
from tunery.runfolder import RunFolder
from tunery.trainers import checkpoint as ckpt
from tunery.trainers.ckpt_writer import CheckpointWriter
from tunery.trainers.common import lr_factor
from tunery.trainers.method import LossOut, Method
from tunery.trainers.progress import Progress
from tunery.trainers.replay import run_max_steps
from tunery.trainers.strategy import Single
from tunery.trainers.watch import Watch


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
    trained_tokens: int = 0  # units that carried loss (trained tokens for SFT)
    elapsed: float = 0.0
    last_loss: float | None = None


@dataclass
class StepResult:
    """What one step's forward and backward passes give, summed over pieces and processes."""

    loss: float  # mean loss per unit
    units: int
    tokens: int
    figures: dict[str, float] = field(default_factory=dict)  # means per unit


@dataclass
class Loop:
    cfg: TrainConfig
    method: Method
    strategy: Single
    model: torch.nn.Module
    train: list
    val: list
    optimizer: torch.optim.Optimizer
    plan: batching.StepPlan
    save_every: int
    watch: Watch
    data: Datasets | None = None  # what the method loaded (the retrieval index and labels are saved from it)
    # The method's name of each optimizer group, in order (kept here: a resumed optimizer's groups hold
    # what the checkpoint saved).
    group_names: list[str] = field(default_factory=lambda: ["all"])
    writer: CheckpointWriter = field(default_factory=CheckpointWriter)  # checkpoints go to disk in the background

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the run: every batch of the plan taken `method.steps_per_batch` times."""
        return self.plan.total_steps * self.method.steps_per_batch


def setup(cfg: TrainConfig, method: Method, model, data: Datasets, strategy: Single | None = None) -> Loop:
    """Make the model trainable (as the strategy holds it), build the optimizer, the step plan and the watch."""
    strategy = strategy or Single()
    method.rank = strategy.dist.rank
    model = strategy.wrap(method.make_trainable(model))
    model.train()
    method.prepare(model, strategy.logits_at)
    tc = cfg.training
    groups = method.param_groups(model)
    optimizer = make_optimizer(groups, cfg)
    # batch_size is per process: N processes step through the examples N x batch_size at a time.
    max_steps = run_max_steps(cfg, data.train)  # data.replay_mode extend adds steps for the replay rows
    plan = batching.make_plan(len(data.train), tc.batch_size * strategy.dist.world, tc.grad_accum, tc.epochs,
                              max_steps, tc.seed)
    if max_steps is not None and method.steps_per_batch > 1:  # max_steps counts optimizer steps
        plan = batching.make_plan(len(data.train), tc.batch_size * strategy.dist.world, tc.grad_accum, tc.epochs,
                                  max(1, max_steps // method.steps_per_batch), tc.seed)
    rows_per_step = tc.batch_size * tc.grad_accum * strategy.dist.world
    watch = Watch.for_run(cfg, plan.total_steps * method.steps_per_batch, data.val_examples, data,
                          validation_cost(method, data.train, data.val, rows_per_step))
    save_every = tc.save_every or watch.eval_every
    return Loop(cfg, method, strategy, model, data.train, data.val, optimizer, plan, save_every, watch, data,
                [name for name, _ in groups])


def validation_cost(method: Method, train: list, val: list, rows_per_step: int) -> float:
    """One validation's cost in optimizer steps: its forward passes over every validation token against
    a step's forward and backward (about 3 forwards) over an average step's tokens. 0 for methods that
    validate in their own way (they may generate) or without data to compare."""
    if method.validates_itself or not train or not val:
        return 0.0
    per_row = sum(method.row_tokens(row) for row in train) / len(train)
    return sum(method.row_tokens(row) for row in val) / (3 * per_row * rows_per_step)


def make_optimizer(groups: list[tuple[str, list]], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the method's parameter groups: torch's fused kernel (one pass over every tensor; on
    this CPU 57 against 336 ms a step for a full fine-tune of the 135M model, 3.6 against 13.3 ms for
    its LoRA r16) where every parameter is a plain float tensor on a CPU or CUDA device, else the
    per-tensor loop (sharded DTensors). Either is deterministic; a checkpoint holds the state, not the
    kernel (`checkpoint.KERNEL_KEYS`), and a run resumed with the same strategy continues bit for bit."""
    params = [p for _, group in groups for p in group]
    fused = all(type(p.data) is torch.Tensor and p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point
                for p in params)
    tc = cfg.training
    return torch.optim.AdamW([{"params": group} for _, group in groups], lr=cfg.peak_lr(), betas=tc.betas,
                             weight_decay=tc.weight_decay, **({"fused": True} if fused else {"foreach": False}))


def step_pieces(loop: Loop, step: int, dry: bool = False) -> list[list]:
    """This process's rows of optimizer step `step`, in the pieces run through forward and backward:
    what the loop trains on and what the preflight measures (`dry`: without side effects, e.g. rows of
    the largest size a method could produce instead of sampling them)."""
    micro = batching.micro_batches_for_step(loop.plan, step // loop.method.steps_per_batch)
    rows = [[loop.train[i] for i in loop.strategy.my_share(idx)] for idx in micro]
    rows = loop.method.expand(loop.model, rows, step, dry)
    return [piece for r in rows for piece in loop.method.pieces(r) if piece]


def pass_loss(loop: Loop, batch: dict[str, torch.Tensor]) -> LossOut:
    """One forward pass of the method's loss, through the strategy's way to the logits."""
    return loop.method.loss(loop.model, batch, loop.strategy.logits_at)


def _fillers(loop: Loop, done: int) -> list[dict[str, torch.Tensor]]:
    """Batches for the passes this process runs to keep in step with the others (none for most
    strategies). Any example will do: their loss is multiplied by zero or dropped."""
    passes = loop.strategy.filler_passes(done)
    return [loop.method.collate(loop.train[:1])] * passes if passes else []


def accumulate(loop: Loop, step: int) -> StepResult:
    """Forward and backward every piece of `step`. Each piece's summed loss is divided by the units of
    the whole step (every piece, every process), so 1 x 8 and 8 x 1 give the same update."""
    method, strategy = loop.method, loop.strategy
    batches = [method.collate(piece) for piece in step_pieces(loop, step)]
    units, divisor = strategy.sum_all([sum(method.units(b) for b in batches),
                                       sum(method.loss_units(b) for b in batches)])
    units, divisor = int(units), divisor if divisor > 0 else 1.0  # weighted units may sum below 1
    fillers = _fillers(loop, len(batches))  # agreed on before any pass: the agreement is a collective too
    loss_total, tokens = 0.0, 0
    figures = dict.fromkeys(method.figures, 0.0)
    for batch in batches:
        out = pass_loss(loop, batch)
        (out.total / divisor).backward()
        loss_total += float(out.total.detach())
        tokens += method.batch_tokens(batch)
        for key in figures:
            figures[key] += float(out.figures.get(key, 0.0))
    for batch in fillers:
        (pass_loss(loop, batch).total * 0.0).backward()  # gradients of exactly zero: only the collectives matter
    loss_total, tokens, *sums = strategy.sum_all([loss_total, tokens, *figures.values()])
    return StepResult(loss_total / divisor, units, int(tokens), means_of(method, dict(zip(figures, sums)), units))


def means_of(method: Method, sums: dict[str, float], units: int) -> dict[str, float]:
    """Figures as means: per unit of the loss, or per the figure the method names as their count
    (`figure_units`: a reward per completion rather than per token, say), then the method's own
    derived figures (a spread from a mean of squares, say)."""
    means = {key: value / max(sums.get(method.figure_units.get(key, ""), units), 1) for key, value in sums.items()}
    return method.derive_figures(means)


def optimizer_step(loop: Loop, step: int, loss: float) -> tuple[bool, float, float]:
    """Combine gradients over processes, clip, and apply the update unless the loss or gradient is
    NaN/inf. Returns (applied, lr, grad norm)."""
    tc = loop.cfg.training
    params = [p for p in loop.model.parameters() if p.requires_grad]
    loop.strategy.combine_gradients(params)
    max_norm = tc.max_grad_norm if tc.max_grad_norm is not None else float("inf")
    # Sharded gradients are DTensors: the norm is then over the whole gradient, the same on every rank.
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    warmup = math.ceil(tc.warmup_ratio * loop.total_steps)
    lr = loop.cfg.peak_lr() * lr_factor(step, loop.total_steps, warmup, tc.scheduler)
    applied = math.isfinite(loss) and math.isfinite(grad_norm)
    if applied:
        for name, group in zip(loop.group_names, loop.optimizer.param_groups, strict=True):
            group["lr"] = lr * loop.method.lr_scale(name, step)
        loop.optimizer.step()
    loop.optimizer.zero_grad(set_to_none=True)
    return applied, lr, grad_norm


@torch.no_grad()
def evaluate(loop: Loop) -> tuple[float, dict[str, float]] | None:
    """Mean loss per unit over the whole validation set and the method's figures (None without one),
    or what the method's own `validate` measures."""
    if not loop.val:
        return None
    method, strategy = loop.method, loop.strategy
    if method.validates_itself:
        return method.validate(loop.model, strategy.my_share(list(range(len(loop.val)))), loop.val, strategy)
    loop.model.eval()
    bs = loop.cfg.training.batch_size
    mine = strategy.my_share(list(range(len(loop.val))))
    total, count = 0.0, 0
    figures = dict.fromkeys(method.figures, 0.0)
    fillers = _fillers(loop, math.ceil(len(mine) / bs))  # agreed on before any pass, as in `accumulate`
    for start in range(0, len(mine), bs):
        out = pass_loss(loop, method.collate([loop.val[i] for i in mine[start:start + bs]]))
        total, count = total + float(out.total), count + out.count
        for key in figures:
            figures[key] += float(out.figures.get(key, 0.0))
    for batch in fillers:
        pass_loss(loop, batch)
    loop.model.train()
    total, count, *sums = strategy.sum_all([total, count, *figures.values()])
    if not count:
        return None
    means = {f"val_{k}": v for k, v in means_of(method, dict(zip(figures, sums)), count).items()}
    return total / count, {"val_ppl": math.exp(min(total / count, 50.0))} | means


def resume(loop: Loop, folder: Path) -> LoopState:
    """Load weights, optimizer moments, RNG streams, the method's state and the loop state from a
    complete checkpoint."""
    state = loop.strategy.load_checkpoint(loop.model, loop.optimizer, folder)
    prefix = f"rank{loop.strategy.dist.rank}."
    saved = ckpt.load_method_state(folder)
    loop.method.load_state_tensors({k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)})
    return LoopState(**state["loop"])


def save(loop: Loop, run: RunFolder, st: LoopState, background: bool = True) -> None:
    """Write a checkpoint for the current step and drop old ones (never the best, never the newest).

    Every process takes part (RNG streams and sharded tensors are gathered); the main one writes."""
    start = time.perf_counter()
    weights, optimizer, rank_rng = loop.strategy.checkpoint_tensors(loop.model, loop.optimizer)
    method_state = loop.strategy.gather_tensors(loop.method.state_tensors())  # every process's own
    if loop.strategy.is_main:
        snap = ckpt.snapshot(st.step, weights, optimizer, asdict(st), rank_rng, method_state)
        protect = {st.best_step} if st.best_step is not None else set()
        keep = loop.cfg.training.keep_checkpoints

        def commit(staged) -> None:
            ckpt.commit_staged(run.checkpoints, snap.step, staged)
            ckpt.rotate(run.checkpoints, keep, protect)

        loop.writer.submit(st.step, time.perf_counter() - start,
                           lambda abandoned: ckpt.stage_snapshot(run.checkpoints, snap, abandoned), commit, background)
    loop.strategy.barrier()


def restore_best(loop: Loop, run: RunFolder, st: LoopState) -> None:
    """Put the best weights (lowest validation loss, or highest grader score) back before the final
    save. Every process calls this."""
    if st.best_step is None or st.best_step == st.step:
        return
    loop.strategy.load_weights(loop.model, ckpt.step_dir(run.checkpoints, st.best_step))


def _guard(st: LoopState, applied: bool, result: StepResult, grad_norm: float, max_bad: int, say) -> None:
    """Count steps whose update was skipped for a NaN/inf loss or gradient; stop after `max_bad` in a row."""
    st.bad_steps = 0 if applied else st.bad_steps + 1
    if applied:
        st.last_loss = result.loss
        return
    say(f"step {st.step}: loss {result.loss} / grad norm {grad_norm}: not finite, update skipped")
    if st.bad_steps >= max_bad:
        raise TuneryError(
            f"training stopped at step {st.step}: {st.bad_steps} steps in a row had a NaN/inf loss or gradient",
            why="the updates were skipped, so the saved weights are the last finite ones",
            fix="lower training.lr, keep training.max_grad_norm set, or check the data",
        )


def _evaluate_and_watch(loop: Loop, run: RunFolder, st: LoopState, say) -> bool:
    """Validation and graders when due; True when early stopping says stop."""
    stop = False
    if loop.watch.validation_due(st.step):
        measured = evaluate(loop)
        if measured is not None:
            stop = loop.watch.on_validation(st, measured[0], measured[1], run, say)
    if loop.watch.grader_due(st.step):
        scores = loop.watch.score(loop.model, loop.method.tokenizer)
        stop = loop.watch.on_grader(st, scores, run, say) or stop
    return stop


def train(loop: Loop, run: RunFolder, st: LoopState, should_stop: Callable[[], bool]) -> tuple[LoopState, str]:
    """The loop. Returns the final state and why it ended: finished, early_stopped or interrupted."""
    tc, total = loop.cfg.training, loop.total_steps
    main = loop.strategy.is_main
    if main:
        run.root.mkdir(parents=True, exist_ok=True)
    else:  # only the main process writes metrics and prints
        run = RunFolder(run.root, writable=False)
    progress = Progress(total, st.step, st.elapsed, enabled=main)
    reason = "finished"
    try:
        while st.step < total:
            result = accumulate(loop, st.step)
            applied, lr, grad_norm = optimizer_step(loop, st.step, result.loss)
            st.step += 1
            _guard(st, applied, result, grad_norm, tc.max_bad_steps, progress.write)
            st.tokens, st.trained_tokens = st.tokens + result.tokens, st.trained_tokens + result.units
            st.elapsed = progress.elapsed()
            progress.count(result.tokens)
            progress.step_done(st.step, result.loss, lr)
            if st.step % tc.log_every == 0 or st.step == total:
                log_step(run, progress, st, result, lr, grad_norm, loop.method.unit)
            stop_early = _evaluate_and_watch(loop, run, st, progress.write)
            interrupted = loop.strategy.any(should_stop())
            ending = interrupted or stop_early or st.step == total
            if st.step % loop.save_every == 0 or st.best_step == st.step or ending:
                # The checkpoint that ends the loop is written in its own thread: nothing is left to
                # overlap with, and a second Ctrl-C during that write must leave it incomplete.
                save(loop, run, st, background=not ending)
            else:
                loop.writer.poll()  # a checkpoint whose files are on disk is marked complete now
            if stop_early:
                progress.write(f"early stopping at step {st.step}: {loop.watch.describe_best(st, since=True)}")
                reason = "early_stopped"
                break
            if interrupted:
                reason = "interrupted"
                break
        loop.writer.wait()  # every checkpoint is on disk (restore_best and resume read them) or its error raised
    except KeyboardInterrupt:
        loop.writer.abandon()  # a second Ctrl-C: the checkpoint in progress is never marked complete
        raise
    except BaseException:
        _drain(loop.writer)  # the checkpoint being written still lands; the loop's own error wins
        raise
    finally:
        progress.close()
    loop.strategy.barrier()  # and no process reads one before the main process has written it
    if main and loop.writer.summary():
        progress.write(loop.writer.summary())
    return st, reason


def _drain(writer: CheckpointWriter) -> None:
    try:
        writer.wait()
    except Exception:  # noqa: BLE001 - an error of the loop itself is already on its way
        pass


def log_step(run: RunFolder, progress: Progress, st: LoopState, result: StepResult, lr: float,
             grad_norm: float, unit: str = "tokens") -> None:
    tok_s = progress.tokens_per_second()
    run.append_metrics({"kind": "train", "step": st.step, "loss": result.loss, "lr": lr, "grad_norm": grad_norm,
                        f"trained_{unit}": result.units, **result.figures, "tokens_per_s": round(tok_s, 1),
                        "elapsed_s": round(st.elapsed, 2)})
    progress.log_line(st.step, result.loss, lr, tok_s)
