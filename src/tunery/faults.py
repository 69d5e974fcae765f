"""Fault injection for the reliability suite (`make faults`) and its regression tests; inert unless armed.

`TUNERY_FAULT` arms one fault, `KIND:POINT:N`: at the N-th time (1-based) this process reaches the
named point, do KIND:

- `kill`: SIGKILL this process (a `kill -9` landing exactly inside that window);
- `enospc`: raise `OSError(ENOSPC)`, as a write on a full disk does;
- `nan`: poison a value with NaN (points `loss`, `grad`, `weight`; see `arm_nan`);
- `count` (`count:all:0`): count every point reached and print the counts to stderr at exit (the
  suite draws N within them).

Points are named where they are reached: `atomic-file` and `atomic-dir` (a file or folder fully
written in its temporary name, before the rename), `swap` (the previous output renamed aside, the new
one not yet in), `metrics-append` (half of a metrics line written), `checkpoint` (a checkpoint folder
being written). Reading one environment variable per call costs nothing measurable next to a write.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import signal
import sys

ENV = "TUNERY_FAULT"
COUNTS_LINE = "tunery fault points reached: "
_hits: dict[str, int] = {}


def _armed() -> tuple[str, str, int] | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    kind, point, count = spec.split(":")
    return kind, point, int(count)


def hit(point: str) -> str | None:
    """Count a visit of `point`; the armed kind when this very visit is the armed one, else None."""
    armed = _armed()
    if armed is not None and armed[0] == "count":  # calibration: how often each point is reached
        if not _hits:
            atexit.register(lambda: print(f"{COUNTS_LINE}{json.dumps(_hits)}", file=sys.stderr, flush=True))
        _hits[point] = _hits.get(point, 0) + 1
        return None
    if armed is None or armed[1] != point:
        return None
    _hits[point] = _hits.get(point, 0) + 1
    return armed[0] if _hits[point] == armed[2] else None


def act(kind: str, point: str) -> None:
    """Do a `kill` or `enospc` fault now."""
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + f" (injected at {point})")


def reached(point: str) -> None:
    """A write window: die here (`kill`) or fail as a full disk would (`enospc`) when armed to."""
    kind = hit(point)
    if kind in ("kill", "enospc"):
        act(kind, point)


def arm_nan(model, optimizer) -> None:
    """With `TUNERY_FAULT=nan:loss|grad|weight:N`, poison the N-th forward output, the N-th gradient
    or a weight after the N-th optimizer step. Hooks only: the training code is unchanged."""
    import torch

    armed = _armed()
    if armed is None or armed[0] != "nan":
        return
    point = armed[1]
    first = next(p for p in model.parameters() if p.requires_grad)
    if point == "loss":  # the output head's result, in training passes only (not validation)
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        causal.get_output_embeddings().register_forward_hook(
            lambda module, _args, out: out * float("nan") if module.training and hit("loss") == "nan" else out)
    elif point == "grad":
        first.register_hook(lambda grad: grad * float("nan") if hit("grad") == "nan" else grad)
    elif point == "weight":
        def poison_weight(_optimizer, _args, _kwargs):
            if hit("weight") == "nan":
                with torch.no_grad():
                    first.view(-1)[0] = float("nan")
        optimizer.register_step_post_hook(poison_weight)
