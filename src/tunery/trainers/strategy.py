"""How a run is spread over processes, chosen once at setup: one process, data parallel, or sharded.

A strategy answers every question the loop would otherwise ask with "am I sharded?": which examples
of a step this process takes, how a forward pass reaches the logits, how gradients are combined, how
many filler passes keep the processes in step, what a checkpoint holds and how it is read back. The
loop and the methods call these and nothing else, so a new method runs under every strategy.

- `Single`: one process; everything is local.
- `DataParallel`: torch.distributed (gloo on CPU, NCCL on CUDA); rank r takes every world-th example
  of each micro-batch and gradients are summed after backward (`trainers/distributed.py`).
- `Sharded`: FSDP2 (`trainers/fsdp.py`); weights, gradients and AdamW moments are 1/N per process,
  gradients are summed by the reduce-scatter in backward, and checkpoints are gathered to full tensors
  on rank 0 in the layout a one-process run writes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunery.models import adapters
from tunery.models.forward import LogitsAt, head_logits, root_logits
from tunery.trainers import checkpoint as ckpt
from tunery.trainers import distributed as ddp


class Single:
    """One process holds the whole model."""

    name = "single"
    logits_at: LogitsAt = staticmethod(head_logits)

    def __init__(self, dist: ddp.Dist = ddp.SINGLE):
        self.dist = dist

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def device(self) -> torch.device:
        """Where this process trains: its GPU when there is one (torchrun sets each process's), else the CPU."""
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

    def wrap(self, model):
        """The model as this strategy trains it (before the optimizer is built): on this process's device."""
        return _on(model, self.device)

    def my_share(self, indices: list[int]) -> list[int]:
        """This process's examples of a global micro-batch."""
        return indices

    def sum(self, value: float) -> float:
        return value

    def sum_all(self, values: list[float]) -> list[float]:
        """Each value summed over processes, in one collective."""
        return [float(v) for v in values]

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on one (a signal reached one process, say)."""
        return flag

    def combine_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Make every process's gradients the sum over processes (nothing to do alone)."""

    def filler_passes(self, done: int) -> int:
        """Extra forward (and backward) passes this process must run to keep in step with the others."""
        return 0

    def barrier(self) -> None:
        ddp.barrier(self.dist)

    def gather_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every process's `tensors`, keyed `rank{r}.name`, on the main process (all must call this)."""
        return {f"rank{self.dist.rank}.{k}": v for k, v in tensors.items()}

    # What a checkpoint holds, and reading it back.
    def checkpoint_tensors(self, model, optimizer) -> tuple[dict, torch.optim.Optimizer | dict, list | None]:
        """(trainable weights, optimizer or its full state dict, every rank's RNG state or None)."""
        return adapters.trainable_state(model), optimizer, None

    def load_checkpoint(self, model, optimizer, folder: Path) -> dict:
        """Weights, optimizer moments and RNG streams from `folder`; returns the saved state.json."""
        weights, extra, state = ckpt.load_checkpoint(folder)
        adapters.load_trainable_state(model, weights)
        ckpt.restore_training_state(folder, optimizer, extra, state, rank=self.dist.rank)
        return state

    def load_weights(self, model, folder: Path) -> None:
        """The trainable weights of checkpoint `folder` (restoring the best before the final save)."""
        weights, _, _ = ckpt.load_checkpoint(folder)
        adapters.load_trainable_state(model, weights)

    def final_state(self, model) -> dict | None:
        """The full state dict to save when the model's parameters are spread over processes, else None."""
        return None


class DataParallel(Single):
    """Each process holds the whole model and takes a share of every micro-batch."""

    name = "data_parallel"

    def my_share(self, indices: list[int]) -> list[int]:
        return ddp.shard(indices, self.dist)

    def sum(self, value: float) -> float:
        return ddp.sum_over_ranks(value, self.dist)

    def sum_all(self, values: list[float]) -> list[float]:
        return ddp.sum_all_over_ranks(values, self.dist)

    def any(self, flag: bool) -> bool:
        return ddp.any_rank(flag, self.dist)

    def combine_gradients(self, params: list[torch.nn.Parameter]) -> None:
        ddp.sum_gradients(params, self.dist)

    def gather_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        gathered = ddp.gather_objects({k: v.cpu() for k, v in tensors.items()}, self.dist)
        return {f"rank{r}.{k}": v for r, part in enumerate(gathered) for k, v in part.items()}

    def checkpoint_tensors(self, model, optimizer):
        return adapters.trainable_state(model), optimizer, ddp.gather_rng_states(self.dist)


class Sharded(DataParallel):
    """FSDP2: every process holds 1/N of each weight, gradient and AdamW moment."""

    name = "sharded"
    logits_at: LogitsAt = staticmethod(root_logits)

    def wrap(self, model):
        from tunery.trainers import fsdp

        return fsdp.shard(_on(model, self.device), self.dist)  # before the optimizer: its moments are shards too

    def combine_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Nothing: FSDP's reduce-scatter summed them during backward."""

    def filler_passes(self, done: int) -> int:
        from tunery.trainers import fsdp

        return fsdp.passes_to_match(done, self.dist)

    def checkpoint_tensors(self, model, optimizer):
        from tunery.trainers import fsdp

        rank_rng = ddp.gather_rng_states(self.dist)
        return fsdp.full_weights(model), fsdp.full_optimizer_state(model, optimizer, self.dist), rank_rng

    def load_checkpoint(self, model, optimizer, folder: Path) -> dict:
        """Rank 0 reads the tensors and broadcasts them into every rank's shards."""
        from tunery.trainers import fsdp

        weights, extra, state = ckpt.load_checkpoint(folder, tensors=self.dist.is_main)
        fsdp.load_weights(model, weights, self.dist)
        ckpt.restore_training_state(folder, optimizer, extra, state, rank=self.dist.rank,
                                    load_optimizer=lambda saved: fsdp.load_optimizer(model, optimizer, saved,
                                                                                     self.dist))
        return state

    def load_weights(self, model, folder: Path) -> None:
        from tunery.trainers import fsdp

        weights, _, _ = ckpt.load_checkpoint(folder, tensors=self.dist.is_main)
        fsdp.load_weights(model, weights, self.dist)

    def final_state(self, model) -> dict:
        """Gathered on rank 0 (the other ranks get an empty dict); every rank must call this."""
        from tunery.trainers import fsdp

        return fsdp.full_model_state(model)


def _on(model, device: torch.device):
    """`model` on `device` (a 4-bit base is loaded there already and cannot be moved)."""
    current = next(model.parameters()).device
    return model if current == device else model.to(device)


def choose(fsdp: bool, dist: ddp.Dist) -> Single:
    """The strategy for a run: sharded with `training.fsdp` on several processes, else data parallel on
    several, else a single process."""
    if not dist.active:
        return Single(dist)
    return Sharded(dist) if fsdp else DataParallel(dist)
