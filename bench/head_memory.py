"""Peak memory of the output head's loss for a large vocabulary: the plain path against the sliced one
(losses/head_ce.py), each in its own process, forward and backward, the head training (full fine-tuning).

    python bench/head_memory.py [--positions 2048] [--hidden 512] [--vocab 128256]

Llama 3's vocabulary (128,256) with 2,048 trained positions in a micro-batch: the plain path holds the
logits, their softmax for the backward pass and the logits' gradient, each [positions, vocab] in fp32.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(path: str, positions: int, hidden: int, vocab: int) -> dict:
    import torch
    import torch.nn.functional as F

    from tunery.losses.head_ce import head_ce_sum
    from tunery.models.forward import HEAD_SLICE_ELEMENTS

    g = torch.Generator().manual_seed(0)
    h = torch.randn(positions, hidden, generator=g, requires_grad=True)
    w = (torch.randn(vocab, hidden, generator=g) * 0.02).requires_grad_()
    t = torch.randint(0, vocab, (positions,), generator=g)
    before = peak_rss_mb()
    start = time.perf_counter()
    if path == "plain":
        loss = F.cross_entropy((h @ w.T).float(), t, reduction="sum")
    else:
        loss, _ = head_ce_sum(h, w, t, HEAD_SLICE_ELEMENTS // vocab)
    loss.backward()
    return {"path": path, "seconds": time.perf_counter() - start, "loss": float(loss.detach()),
            "peak_mb": peak_rss_mb(), "inputs_mb": before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--child")
    args = parser.parse_args()
    shape = [str(args.positions), str(args.hidden), str(args.vocab)]
    if args.child:
        print(json.dumps(child(args.child, args.positions, args.hidden, args.vocab)))
        return
    rows = []
    for path in ("plain", "sliced"):
        out = subprocess.run([sys.executable, __file__, "--child", path, "--positions", shape[0], "--hidden",
                              shape[1], "--vocab", shape[2]], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.splitlines()[-1]))
    print(f"{args.positions} positions x {args.vocab} vocabulary, hidden {args.hidden}, fp32, head training")
    print(f"{'path':<8}{'peak MiB':>10}{'above inputs':>14}{'seconds':>9}{'loss':>14}")
    for r in rows:
        print(f"{r['path']:<8}{r['peak_mb']:>10.0f}{r['peak_mb'] - r['inputs_mb']:>14.0f}{r['seconds']:>9.2f}"
              f"{r['loss']:>14.2f}")
    plain, sliced = rows
    print(f"sliced / plain: {(sliced['peak_mb'] - sliced['inputs_mb']) / (plain['peak_mb'] - plain['inputs_mb']):.2f}x "
          f"the memory above the inputs, {sliced['seconds'] / plain['seconds']:.2f}x the time")


if __name__ == "__main__":
    main()
