"""Data parallelism on torch.distributed: gloo on CPU, NCCL on CUDA, launched by torchrun.

Each optimizer step's micro-batches are the same global examples as in one process; rank r takes every
world-th example of each micro-batch. Every rank backpropagates its summed loss divided by the trained
tokens of the whole step (summed over ranks), and the gradients are then summed over ranks, so N
processes with batch B compute the same update as one process with batch N x B. Only rank 0 writes
files; each rank's RNG stream is saved so that a resumed multi-process run continues exactly.
With `training.fsdp` the parameters are sharded instead (`trainers/fsdp.py`) and the gradients are
summed by FSDP's reduce-scatter in backward, not here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Dist()


def from_env() -> Dist:
    """Join the process group torchrun describes in the environment (or run alone without one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    import torch.distributed as dist

    if not dist.is_initialized():
        # With CUDA, NCCL carries the tensors on the GPU (FSDP's all-gathers and reduce-scatters) and
        # gloo the small CPU ones (token counts, losses, RNG states), which NCCL cannot take.
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), dist.get_world_size())


def shard(indices: list[int], d: Dist) -> list[int]:
    """This rank's share of a global micro-batch."""
    return indices[d.rank::d.world] if d.active else indices


def sum_over_ranks(value: float, d: Dist) -> float:
    if not d.active:
        return value
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def sum_all_over_ranks(values: list[float], d: Dist) -> list[float]:
    """Each value summed over ranks, in one all-reduce of a float64 vector."""
    if not d.active:
        return [float(v) for v in values]
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def max_over_ranks(value: int, d: Dist) -> int:
    if not d.active:
        return value
    import torch.distributed as dist

    t = torch.tensor([int(value)], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank when it is true on one (a signal reached one process, say)."""
    return sum_over_ranks(1.0 if flag else 0.0, d) > 0


def sum_gradients(params: list[torch.nn.Parameter], d: Dist) -> None:
    """Sum the gradients of `params` over ranks, in one flat buffer (one collective per step)."""
    if not d.active:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def gather_rng_states(d: Dist) -> list[torch.Tensor]:
    """Every rank's torch CPU RNG state (all ranks must call this)."""
    state = torch.get_rng_state()
    if not d.active:
        return [state]
    import torch.distributed as dist

    states = [torch.empty_like(state) for _ in range(d.world)]
    dist.all_gather(states, state)
    return states


def gather_objects(value, d: Dist) -> list:
    """Every rank's `value` (small: a method's state between steps), in rank order, on every rank.

    torch pickles the values to send them between this run's own processes; nothing is read from disk."""
    if not d.active:
        return [value]
    import torch.distributed as dist

    gathered = [None] * d.world
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
