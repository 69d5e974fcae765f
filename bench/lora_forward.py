"""PEFT's LoRA layers against tunery's lean forward (`tunery.models.lean_lora`), module by module.

    python bench/lora_forward.py [--tokens 450] [--threads 2]

Forward and backward through four LoRA r16 modules of SmolLM2-135M's shapes (q 576->576, k 576->192,
gate 576->1536, down 1536->576) on one packed piece of `--tokens` tokens (450: a quickstart piece),
the same weights both ways; prints the median time of each and their ratio. The whole-step effect is
smaller than the run-to-run noise of a training step, so it is measured here, where it is not.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn


class FourModules(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(576, 576, bias=False), nn.Linear(576, 192, bias=False)
        self.gate, self.down = nn.Linear(576, 1536, bias=False), nn.Linear(1536, 576, bias=False)

    def forward(self, x, wide):
        return self.q(x).sum() + self.k(x).sum() + self.gate(x).sum() + self.down(wide).sum()


def median_ms(model, x, wide, rounds: int = 7, calls: int = 20) -> float:
    for _ in range(3):
        model(x, wide).backward()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            model(x, wide).backward()
        times.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=450)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from peft import LoraConfig, get_peft_model

    from tunery.models.lean_lora import lean_lora

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    theirs = get_peft_model(FourModules(), LoraConfig(r=16, lora_alpha=32, target_modules=["q", "k", "gate", "down"]))
    ours = copy.deepcopy(theirs)
    assert lean_lora(ours) == 4
    x = torch.randn(1, args.tokens, 576, requires_grad=True)
    wide = torch.randn(1, args.tokens, 1536, requires_grad=True)
    print(f"{'round':<7}{'PEFT ms':>9}{'lean ms':>9}{'lean x':>8}")
    for i in range(2):
        a, b = median_ms(theirs, x, wide), median_ms(ours, x, wide)
        print(f"{i + 1:<7}{a:>9.2f}{b:>9.2f}{a / b:>8.3f}")


if __name__ == "__main__":
    main()
