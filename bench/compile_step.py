"""What does `torch.compile` give the training step? The same steps of a config's run, eager and with
each decoder layer compiled (regional compilation: one layer's graph, reused by the others).

    python bench/compile_step.py examples/quickstart/config.yaml [--steps 12] [--set lora.dropout=0]

Each variant runs in its own process, one after the other. Printed per variant: the first step
(compilation included), the mean of the later steps, and their losses, which must agree with eager's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch


def run_variant(config: str, overrides: list[str], steps: int, compiled: bool) -> dict:
    from tunery.config.load import load_config
    from tunery.models.forward import causal_lm_of
    from tunery.trainers import loop
    from tunery.trainers.run import prepare

    torch.manual_seed(0)
    cfg = load_config(config, ["training.preflight=false", *overrides]).config
    s = prepare(cfg, log=lambda t: print(t, file=sys.stderr))
    if compiled:
        for layer in causal_lm_of(s.model).get_decoder().layers:
            layer.compile(dynamic=True)
    times, losses = [], []
    for step in range(steps):
        began = time.perf_counter()
        loss = loop.accumulate(s, step).loss
        loop.optimizer_step(s, step, loss)
        times.append(time.perf_counter() - began)
        losses.append(loss)
    return {"compiled": compiled, "first_s": times[0], "later_s": sum(times[1:]) / (steps - 1), "losses": losses}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--set", action="append", default=[], help="a config override, as on `tunery train`")
    parser.add_argument("--variant", choices=["eager", "compiled"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.config, args.set, args.steps, args.variant == "compiled")))
        return
    rows = []
    for variant in ("eager", "compiled"):
        cmd = [sys.executable, __file__, args.config, "--steps", str(args.steps), "--variant", variant]
        cmd += [f"--set={o}" for o in args.set]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    eager = rows[0]
    print(f"{'variant':10} {'first step s':>12} {'later steps s':>13} {'x eager':>8} {'max loss diff':>14}")
    for row in rows:
        diff = max(abs(a - b) for a, b in zip(row["losses"], eager["losses"]))
        print(f"{'compiled' if row['compiled'] else 'eager':10} {row['first_s']:12.2f} {row['later_s']:13.3f} "
              f"{eager['later_s'] / row['later_s']:8.2f} {diff:14.2e}")


if __name__ == "__main__":
    main()
