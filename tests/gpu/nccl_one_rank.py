"""One torchrun worker that joins an NCCL process group and trains through `run_training` as rank 0 of
1 (for tests/gpu/test_gpu_training.py). tunery itself runs alone when the world is one process, so this
worker declares the group active to exercise the collectives: gradient sums over NCCL on the GPU, token
counts and RNG states over gloo on the CPU. Prints one JSON line: the backend, where the gradients
lived and the device's peak memory.

Usage: python -m torch.distributed.run --standalone --nproc_per_node=1 nccl_one_rank.py CONFIG OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import yaml


def main(config: Path, out: Path) -> None:
    from tunery.config.load import validate
    from tunery.trainers import distributed as ddp
    from tunery.trainers.run import run_training

    class GroupOfOne(ddp.Dist):
        @property
        def active(self) -> bool:  # the collectives run even with one rank
            return True

    torch.cuda.set_device(0)
    dist.init_process_group(backend="cpu:gloo,cuda:nccl")
    seen: list[str] = []
    summed = ddp.sum_gradients

    def watching(params, d):  # where the gradients were when NCCL summed them
        seen.extend(str(p.grad.device.type) for p in params[:1] if p.grad is not None)
        return summed(params, d)

    ddp.sum_gradients = watching
    try:
        run_training(validate(yaml.safe_load(config.read_text())), out, log=lambda _: None,
                     dist=GroupOfOne(rank=0, world=1))
    finally:
        backend = str(dist.get_backend())
        dist.destroy_process_group()
    print(json.dumps({"backend": backend, "gradient_device": seen[0] if seen else None,
                      "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
