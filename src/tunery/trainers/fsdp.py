"""Fully sharded data parallel (`training.fsdp`): FSDP2's `fully_shard` over the processes of a run.

Each decoder layer, and then the whole model, becomes an FSDP unit. Between uses every rank holds 1/N
of each weight (a DTensor shard), of its gradient and of its AdamW moments. A unit's forward
all-gathers its weights and frees them afterwards; its backward reduce-scatters the gradients. The
reduction is set to a plain sum (FSDP averages by default) because the loop already divides each
rank's summed loss by the trained tokens of the whole step: N processes of batch B then make the
update of one process of batch N x B, as in plain data parallel.

Collectives pair up across ranks, so every rank must run as many forward and backward passes as the
busiest one (`passes_to_match`). What is saved is gathered into full tensors on rank 0, in the layout
a one-process run writes, and loaded back by broadcast from rank 0, so checkpoints and final models
move freely between process counts.
"""

from __future__ import annotations

import torch

from tunery.errors import TuneryError
from tunery.models import adapters
from tunery.trainers import distributed as ddp
from tunery.models.forward import causal_lm_of


def is_sharded(model) -> bool:
    if not torch.distributed.is_available():  # builds without torch.distributed cannot shard
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated blocks of the model (transformers names their class in `_no_split_modules`)."""
    names = set(getattr(causal_lm_of(model), "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise TuneryError(
            f"training.fsdp cannot find the decoder layers of {type(causal_lm_of(model)).__name__}",
            why="each layer becomes one FSDP unit; transformers lists their class in _no_split_modules, "
            "which this model does not",
            fix="train without training.fsdp",
        )
    return layers


def shard(model, dist: ddp.Dist):
    """Shard `model` in place over the ranks of `dist`: each decoder layer, then the rest as the root.

    Call before building the optimizer, so that it holds (and keeps moments for) the shards only."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (dist.world,))
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for unit in [*layers, model]:
        # Sum, not average: the loss is already divided by the whole step's trained tokens. Plain SUM
        # collectives (no pre-multiplied sum) are what gloo supports, and NCCL too.
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    return model


def passes_to_match(done: int, dist: ddp.Dist) -> int:
    """Extra passes this rank must run so that every rank runs as many as the busiest one.

    Ranks can differ: a step's examples are dealt round-robin (the last micro-batch of an epoch may
    leave a rank nothing) and packed micro-batches are cut into pieces by tokens. Each forward
    all-gathers and each backward reduce-scatters with all the other ranks, so a rank that ran fewer
    would leave the others waiting."""
    return ddp.max_over_ranks(done, dist) - done


@torch.no_grad()
def full_weights(model) -> dict[str, torch.Tensor]:
    """The trainable weights as full CPU tensors, by the names `adapters.trainable_state` uses.

    Every rank must call this; rank 0 gets the tensors, the others an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    gathered = get_model_state_dict(model, options=options)
    return {name: gathered[name] for name in adapters.trainable_names(model) if name in gathered}


@torch.no_grad()
def full_model_state(model) -> dict[str, torch.Tensor]:
    """The whole state dict (frozen weights and buffers too) as full CPU tensors, for `save_pretrained`.

    Tied weights point at one tensor again, so transformers stores them once, as it does unsharded.
    Every rank must call this; rank 0 gets the tensors, the others an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    gathered = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return _tie_aliases(model, gathered)


def _tie_aliases(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Point every other name of a shared parameter (a tied head) at the tensor of its first name."""
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        primary = first.setdefault(id(param), name)
        if primary != name and primary in state:
            state[name] = state[primary]
    return state


def optimizer_names(model, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's order: name i is what `optimizer.state_dict()` numbers i."""
    by_id = {id(p): name for name, p in model.named_parameters()}
    return [by_id[id(p)] for group in optimizer.param_groups for p in group["params"]]


@torch.no_grad()
def full_optimizer_state(model, optimizer: torch.optim.Optimizer, dist: ddp.Dist) -> dict:
    """The optimizer's state dict with full CPU tensors, numbered as `optimizer.state_dict()` numbers
    it (so the checkpoint is the one an unsharded run writes). Every rank must call this; rank 0 gets
    the state, the others an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if not optimizer.state:  # no update applied yet (torch would fill in a zero-gradient step)
        return optimizer.state_dict() if dist.is_main else {}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    gathered = get_optimizer_state_dict(model, optimizer, options=options)
    if not dist.is_main:
        return {}
    index = {name: i for i, name in enumerate(optimizer_names(model, optimizer))}
    state = {index[name]: slots for name, slots in gathered["state"].items()}
    return {"state": state, "param_groups": optimizer.state_dict()["param_groups"]}


@torch.no_grad()
def load_weights(model, weights: dict[str, torch.Tensor], dist: ddp.Dist) -> None:
    """Put full trainable weights (read on rank 0; the other ranks pass {}) into the shards of every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    problem = adapters.name_mismatch(model, weights) if dist.is_main else None
    if ddp.any_rank(problem is not None, dist):
        raise problem or TuneryError("the checkpoint does not match the model being trained (see rank 0)")
    # strict=False: the frozen weights of a LoRA run are not in the checkpoint and stay as loaded.
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(model, _tie_aliases(model, dict(weights)), options=options)


@torch.no_grad()
def load_optimizer(model, optimizer: torch.optim.Optimizer, saved: dict, dist: ddp.Dist) -> None:
    """Put a saved optimizer state dict (numbered as `optimizer.state_dict()`; read on rank 0, the other
    ranks pass {}) into the sharded optimizer of every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if not ddp.any_rank(bool(saved.get("state")), dist):  # saved before any update: nothing to load
        return
    by_fqn = {}
    if dist.is_main:
        names = optimizer_names(model, optimizer)
        groups = [group | {"params": [names[i] for i in group["params"]]} for group in saved["param_groups"]]
        by_fqn = {"state": {names[int(i)]: slots for i, slots in saved["state"].items()}, "param_groups": groups}
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_optimizer_state_dict(model, optimizer, by_fqn, options=options)
