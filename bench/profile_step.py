"""Where does a training step's time go? torch.profiler over a few steps of a config's run.

    python bench/profile_step.py examples/quickstart/config.yaml [--steps 3] [--set lora.dropout_mask=per_module]

Prints the operators by self CPU time and the share of matrix products (the work that counts).
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from tunery.config.load import load_config
from tunery.trainers import loop
from tunery.trainers.run import prepare


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="a config override, as on `tunery train`")
    args = parser.parse_args()
    cfg = load_config(args.config, ["training.preflight=false", *args.set]).config
    s = prepare(cfg, log=lambda t: print(t, file=sys.stderr))
    loop.accumulate(s, 0)  # warm-up
    s.optimizer.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for step in range(1, args.steps + 1):
            loop.optimizer_step(s, step, loop.accumulate(s, step).loss)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm"))
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))
    masks = sum(e.self_cpu_time_total for e in events if e.key == "aten::bernoulli_")
    print(f"matrix products: {100 * matmul / total:.0f}% of self CPU time")
    print(f"dropout masks (aten::bernoulli_): {100 * masks / total:.0f}% of self CPU time")
    print(f"self CPU time per step: {total / 1e6 / args.steps:.2f} s")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
