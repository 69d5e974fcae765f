"""Preflight: estimate a run's peak memory and time before training, and say what to change if it won't fit.

The estimate combines what the shapes give exactly (weights, gradients, AdamW moments) with what two
probe passes measure on this machine (activation memory per token and seconds per token, from forward
and backward passes of the method's own loss on real examples of the run). The pieces it sizes come from
the loop's own `step_pieces`, so it measures the steps this process will run (its share under data
parallel, cut by `training.chunk_tokens`). Peak memory is the whole process's resident set on CPU and
the device's allocated memory on CUDA.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tunery.errors import TuneryError
from tunery.trainers.loop import Loop, pass_loss, step_pieces

MIB = 1024 * 1024


@dataclass
class Estimate:
    total_params: int
    trainable_params: int
    steps: int
    tokens_per_step: float
    max_micro_tokens: int
    base_mb: float  # process (or device) memory with the model loaded and the data rendered
    optimizer_mb: float  # AdamW moments: two fp32 copies of the trainable weights
    fixed_mb: float  # what a backward pass holds beyond activations (gradients, buffers)
    activation_mb_per_1k: float
    peak_mb: float
    available_mb: float
    seconds_per_step: float
    total_seconds: float
    suggestions: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.peak_mb <= 0.9 * self.available_mb

    def to_json(self) -> dict:
        return asdict(self) | {"fits": self.fits}


def _cuda(model) -> bool:
    return next(model.parameters()).is_cuda


def current_mb(cuda: bool) -> float:
    if cuda:
        return torch.cuda.memory_allocated() / MIB
    return _status_kb("VmRSS") / 1024


def reset_peak(cuda: bool) -> None:
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:  # writing 5 to clear_refs resets VmHWM to the current resident set (Linux)
        Path("/proc/self/clear_refs").write_text("5")


def peak_mb(cuda: bool) -> float:
    if cuda:
        return torch.cuda.max_memory_allocated() / MIB
    return _status_kb("VmHWM") / 1024


def _status_kb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    return float("nan")


MEMORY_LIMIT_VARIABLE = "TUNERY_MEMORY_LIMIT_MB"


def available_mb(cuda: bool) -> float:
    """Memory this process may use (MiB): the device's free memory, or the machine's available memory,
    capped by `TUNERY_MEMORY_LIMIT_MB` when set (a budget on a shared machine, below what is free)."""
    machine = _machine_available_mb(cuda)
    limit = os.environ.get(MEMORY_LIMIT_VARIABLE)
    if not limit:
        return machine
    try:
        return min(machine, float(limit))
    except ValueError:
        raise TuneryError(f"{MEMORY_LIMIT_VARIABLE}={limit!r} is not a number of MiB",
                          fix="set it to a number such as 8000, or unset it") from None


def _machine_available_mb(cuda: bool) -> float:
    if cuda:
        free, _total = torch.cuda.mem_get_info()
        return free / MIB + torch.cuda.memory_allocated() / MIB
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return float(line.split()[1]) / 1024 + current_mb(False)
    return float("inf")


def rows_with_tokens(rows: list, tokens: int, size) -> list:
    """Examples from the run's own data adding up to about `tokens` (repeated if the data is short);
    `size(row)` counts a row's tokens."""
    picked, total, i = [], 0, 0
    ordered = sorted(rows, key=lambda r: -size(r))
    while total < tokens and ordered:
        row = ordered[i % len(ordered)]
        picked.append(row)
        total += size(row)
        i += 1
    return picked


def probe(loop: Loop, pool: list, tokens: int) -> tuple[float, float]:
    """(peak memory in MiB, seconds per token) of one forward+backward of ~`tokens` tokens of `pool`'s rows.

    The peak is absolute (the process's high-water mark, or the device's): memory freed by an earlier
    probe stays with the process and is reused, so growth above the current level would undercount."""
    cuda = _cuda(loop.model)
    batch = loop.method.collate(rows_with_tokens(pool, tokens, loop.method.row_tokens))
    if cuda:
        batch = {k: v.cuda() for k, v in batch.items()}
        torch.cuda.synchronize()
    was_training = loop.model.training
    loop.model.eval()  # no dropout: the probe draws nothing from the RNG the run will use
    reset_peak(cuda)
    start = time.perf_counter()
    out = pass_loss(loop, batch)
    (out.total / max(out.count, 1)).backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = peak_mb(cuda)
    loop.optimizer.zero_grad(set_to_none=True)
    loop.model.train(was_training)
    return peak, seconds / loop.method.batch_tokens(batch)


def first_epoch_pieces(loop: Loop) -> list[list]:
    """The pieces this process runs over the first epoch, from the loop's own `step_pieces` (dry: for
    RL, answers of the longest length it may sample, not the prompts)."""
    per_batch = loop.method.steps_per_batch
    steps = min(loop.plan.steps_per_epoch, loop.plan.total_steps)
    return [piece for batch in range(steps) for piece in step_pieces(loop, batch * per_batch, dry=True)]


def piece_token_stats(loop: Loop, pieces: list[list]) -> tuple[int, float]:
    """(largest piece run through forward+backward at once, in tokens; mean tokens per optimizer step)."""
    sizes = [sum(loop.method.row_tokens(row) for row in piece) for piece in pieces]
    steps = min(loop.plan.steps_per_epoch, loop.plan.total_steps)
    return max(sizes, default=0), sum(sizes) / max(steps, 1)


def estimate(loop: Loop) -> Estimate:
    """Estimate peak memory and time of the run set up in `loop`, probing two batch sizes."""
    cuda = _cuda(loop.model)
    base = current_mb(cuda)
    trainable = [p for p in loop.model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in loop.model.parameters())
    optimizer = 2 * sum(p.numel() * 4 for p in trainable) / MIB  # AdamW moments are kept in fp32
    pieces = first_epoch_pieces(loop)
    largest, per_step = piece_token_stats(loop, pieces)
    pool = [row for piece in pieces for row in piece]
    # The larger probe is the largest piece itself: its high-water mark is what the run will reach.
    small, big = max(16, largest // 2), max(32, largest)
    probe(loop, pool, small)  # warm-up: pages the weights in, first-call allocations, kernel selection
    peak_small, _ = probe(loop, pool, small)
    peak_big, sec_per_token = probe(loop, pool, big)
    slope = max(0.0, (peak_big - peak_small) / (big - small))
    fixed = max(0.0, peak_small - slope * small - base)
    peak = base + optimizer + fixed + slope * largest
    est = Estimate(n_total, n_train, loop.total_steps, per_step, largest, round(base, 1), round(optimizer, 1),
                   round(fixed, 1), round(slope * 1000, 2), round(peak, 1), round(available_mb(cuda), 1),
                   round(sec_per_token * per_step, 3), round(sec_per_token * per_step * loop.total_steps, 1))
    est.suggestions = suggest(loop.cfg, est)
    return est


def suggest(cfg, est: Estimate) -> list[str]:
    """Changes that bring the run under the memory available, most gentle first."""
    if est.fits:
        return []
    ideas = []
    act = est.activation_mb_per_1k * est.max_micro_tokens / 1000
    room = 0.9 * est.available_mb - (est.peak_mb - act)
    tc = cfg.training
    if act > 0 and room > 0 and tc.packing:
        factor = 2 ** math.ceil(math.log2(act / room))
        if est.max_micro_tokens // factor >= 64:
            ideas.append(f"training.chunk_tokens={est.max_micro_tokens // factor} "
                         "(the same update in smaller pieces, less activation memory)")
    elif act > 0 and room > 0 and tc.batch_size > 1:
        factor = 2 ** math.ceil(math.log2(act / room))
        if factor < tc.batch_size:
            smaller = max(1, tc.batch_size // factor)
            ideas.append(f"training.batch_size={smaller} training.grad_accum={tc.grad_accum * tc.batch_size // smaller} "
                         "(same examples per step, less activation memory)")
    if cfg.adapter == "full":
        ideas.append("adapter=lora (trains ~1-5% of the weights: no full gradients or AdamW moments)")
    ideas.append(f"data.max_length={max(64, cfg.data.max_length // 2)} (shorter examples)")
    return ideas


def format_estimate(est: Estimate) -> str:
    """A few lines a person reads before starting a run."""
    verdict = "fits" if est.fits else "does NOT fit"
    lines = [
        f"parameters: {est.trainable_params:,} trainable of {est.total_params:,}",
        f"steps: {est.steps}, ~{est.tokens_per_step:.0f} tokens per step, largest micro-batch {est.max_micro_tokens} tokens",
        f"memory: {est.base_mb:.0f} MiB loaded + {est.optimizer_mb:.0f} optimizer + {est.fixed_mb:.0f} gradients/buffers"
        f" + {est.activation_mb_per_1k:.1f} MiB per 1k tokens of activations",
        f"estimated peak: {est.peak_mb:.0f} MiB of {est.available_mb:.0f} MiB available: {verdict}",
        f"time: ~{est.seconds_per_step:.2f} s per step, ~{est.total_seconds / 60:.1f} min for the run (without evaluation)",
    ]
    lines += [f"suggestion: {idea}" for idea in est.suggestions]
    return "\n".join(lines)
