"""Resumable checkpoints: trainable weights, optimizer moments, RNG states and loop state.

Everything is written as safetensors plus JSON (nothing that loading would execute), into a temporary
folder that is fsynced (`stage_snapshot`, which a background thread may do), then marked complete and
renamed into place (`commit_staged`, always in the loop's thread), the two halves of
`tunery.atomic.atomic_dir`. A folder without the marker is never read, so a `kill -9` or a full disk
during a write costs at most that checkpoint.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tunery import faults
from tunery.atomic import begin_dir, finish_dir, fsync_tree, remove_leftovers, remove_path, write_text_atomic
from tunery.trainers.common import assert_finite_state

COMPLETE = "COMPLETE"
WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
METHOD = "method.safetensors"  # what a method carries between steps (an RL generation buffer), if anything


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:07d}"


# How an optimizer computes its update (one fused kernel, or a loop over tensors), not what it holds:
# left out of a checkpoint and taken from the resuming optimizer, so a run saved by one process (fused)
# resumes under FSDP (the loop over DTensors) and back, and its checkpoints are the same files.
KERNEL_KEYS = ("foreach", "fused")


def optimizer_tensors(optimizer: torch.optim.Optimizer | dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state (or its state dict, gathered from shards) into flat tensors (for
    safetensors) and JSON-able metadata."""
    state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, slots in state["state"].items():
        for slot, value in slots.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{index}.{slot}"] = tensor.detach().contiguous().clone()
    groups = [{k: v for k, v in group.items() if k not in KERNEL_KEYS} for group in state["param_groups"]]
    return tensors, {"param_groups": groups}


def saved_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of `optimizer_tensors`: the state dict `optimizer.load_state_dict` takes."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        index, slot = key.split(".", 1)
        state.setdefault(int(index), {})[slot] = tensor
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_snapshot() -> tuple[dict[str, torch.Tensor], dict]:
    """Torch (CPU and CUDA) and Python RNG states."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    version, internal, gauss = random.getstate()
    return tensors, {"python": [version, list(internal), gauss]}


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict, rank: int = 0) -> None:
    torch.set_rng_state(tensors.get(f"rank{rank}.torch_cpu", tensors["torch_cpu"]))
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


@dataclass
class Snapshot:
    """A checkpoint's tensors copied off the live model and optimizer, ready to be written while the
    loop goes on changing the originals."""

    step: int
    weights: dict[str, torch.Tensor]
    optimizer_and_rng: dict[str, torch.Tensor]
    method_state: dict[str, torch.Tensor]
    state: dict


def snapshot(step: int, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | dict,
             loop_state: dict, rank_rng: list[torch.Tensor] | None = None,
             method_state: dict[str, torch.Tensor] | None = None) -> Snapshot:
    """Copy everything checkpoint `step` holds (on the CPU), after checking it is finite.

    `optimizer`: the optimizer, or its state dict with full tensors (a sharded run gathers it first).
    `rank_rng`: each rank's torch RNG state in a multi-process run (rank 0's own is saved anyway).
    `method_state`: tensors the training method carries between steps (none for most methods)."""
    assert_finite_state(weights, f"checkpoint step {step}")
    if method_state:
        assert_finite_state(method_state, f"checkpoint step {step} (method state)")
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    rng_tensors, rng_meta = rng_snapshot()
    for rank, state in enumerate(rank_rng or []):
        rng_tensors[f"rank{rank}.torch_cpu"] = state
    rng_meta["world"] = len(rank_rng) if rank_rng else 1
    both = {f"opt.{k}": v for k, v in opt_tensors.items()} | {f"rng.{k}": v for k, v in rng_tensors.items()}
    return Snapshot(step, _cpu_copies(weights), {k: v.cpu() for k, v in both.items()},
                    _cpu_copies(method_state or {}),
                    json.loads(json.dumps({"step": step, "loop": loop_state, "optimizer": opt_meta, "rng": rng_meta})))


def _cpu_copies(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def write_snapshot(root: Path, snap: Snapshot) -> Path:
    """Write a snapshot as checkpoint folder `step-N` atomically and return the folder."""
    return commit_staged(root, snap.step, stage_snapshot(root, snap))


class Abandoned(Exception):
    """Staging stopped because the loop abandoned the checkpoint (a second Ctrl-C)."""


def stage_snapshot(root: Path, snap: Snapshot, abandoned: Callable[[], bool] = lambda: False) -> Path:
    """Write and fsync every file of checkpoint `snap` in its temporary folder, not yet marked complete
    nor renamed into place: the part of a checkpoint a background thread may do. Returns the folder.
    Between two files, stops (its folder removed) once `abandoned()` is true."""

    def go_on() -> None:
        if abandoned():
            raise Abandoned(f"checkpoint step {snap.step} abandoned")

    tmp = begin_dir(step_dir(root, snap.step))
    try:
        save_file(snap.weights, str(tmp / WEIGHTS))
        faults.reached("checkpoint")  # between two files of one checkpoint
        go_on()
        save_file(snap.optimizer_and_rng, str(tmp / OPTIMIZER))
        go_on()
        if snap.method_state:
            save_file(snap.method_state, str(tmp / METHOD))
        write_text_atomic(tmp / STATE, json.dumps(snap.state, indent=1))
        go_on()
        fsync_tree(tmp)  # the slow part, here: the commit's fsync finds these files already clean
    except BaseException:
        remove_path(tmp)
        raise
    return tmp


def commit_staged(root: Path, step: int, tmp: Path) -> Path:
    """Mark a staged checkpoint complete and rename it into place: always the loop's own thread, so a
    second Ctrl-C, which interrupts that thread, leaves a checkpoint in progress incomplete."""
    final = step_dir(root, step)
    try:
        (tmp / COMPLETE).write_text(f"{step}\n")  # last: the folder is complete (still under its temporary name)
    except BaseException:
        remove_path(tmp)
        raise
    finish_dir(tmp, final)
    return final


def save_checkpoint(root: Path, step: int, weights: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer | dict, loop_state: dict,
                    rank_rng: list[torch.Tensor] | None = None,
                    method_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoint `step` atomically, now, and return its folder (arguments as `snapshot`)."""
    return write_snapshot(root, snapshot(step, weights, optimizer, loop_state, rank_rng, method_state))


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(root: Path) -> Path | None:
    done = complete_checkpoints(root)
    return done[-1] if done else None


def load_checkpoint(folder: Path, tensors: bool = True
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(weights, optimizer+rng tensors, state) of a complete checkpoint.

    `tensors=False` reads only the RNG streams and the state: what a rank needs when rank 0 reads the
    weights and moments and broadcasts them (a sharded run), without a full copy in every process."""
    state = json.loads((folder / STATE).read_text())
    if not tensors:
        with safe_open(str(folder / OPTIMIZER), framework="pt") as fh:
            return {}, {k: fh.get_tensor(k) for k in fh.keys() if k.startswith("rng.")}, state
    weights = load_file(str(folder / WEIGHTS))
    extra = load_file(str(folder / OPTIMIZER))
    return weights, extra, state


def load_method_state(folder: Path) -> dict[str, torch.Tensor]:
    """The method's tensors saved in checkpoint `folder` ({} when it saved none)."""
    path = folder / METHOD
    return load_file(str(path)) if path.is_file() else {}


def restore_training_state(folder: Path, optimizer: torch.optim.Optimizer, extra: dict, state: dict,
                           rank: int = 0, load_optimizer: Callable[[dict], None] | None = None) -> None:
    """Put optimizer moments and RNG streams back as they were when `folder` was written.

    `load_optimizer` takes the saved optimizer state dict instead of `optimizer.load_state_dict` (a
    sharded run spreads it over its ranks). A run resumed on another number of processes continues
    correctly but draws new dropout masks, so it is exact only on the process count it was saved with."""
    opt = {k[len("opt."):]: v for k, v in extra.items() if k.startswith("opt.")}
    rng = {k[len("rng."):]: v for k, v in extra.items() if k.startswith("rng.")}
    saved = saved_optimizer_state(opt, state["optimizer"])
    saved["param_groups"] = [group | {k: live[k] for k in KERNEL_KEYS if k in live}  # this optimizer's kernel
                             for group, live in zip(saved["param_groups"], optimizer.param_groups)]
    (load_optimizer or optimizer.load_state_dict)(saved)
    restore_rng(rng, state["rng"], rank)


def rotate(root: Path, keep: int, protect: set[int]) -> list[Path]:
    """Delete old complete checkpoints beyond the newest `keep`, never one whose step is in `protect`
    (the best), and leftovers of interrupted writes. Returns what was deleted."""
    done = complete_checkpoints(root)
    removable = [p for p in done[:-keep] if int(p.name.split("-")[1]) not in protect] if keep else []
    stale = [p for p in root.glob("step-*") if not (p / COMPLETE).is_file()] if root.is_dir() else []
    for path in removable + stale:
        shutil.rmtree(path, ignore_errors=True)
    remove_leftovers(root)  # temporaries of interrupted writes (.tmp-step-N, .old-step-N)
    return removable
