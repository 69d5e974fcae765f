"""What one code_tests score costs beyond running the program: the sandbox's overhead per completion.

    python bench/sandbox_overhead.py [--n 40] [--out bench/results/sandbox_overhead.json]

Rows, each the mean wall time per program over --n runs (after one warm-up):
- a bare ``python -I -S -c pass`` started with subprocess.run: the floor any process-based sandbox pays;
- `run_python("pass")` with no layer, then with every layer (netns, Landlock, root dropped, seccomp,
  rlimits, audit hook): the sandbox's own cost, folder and clean-up included;
- a realistic completion (a fenced function) with three asserts through the code_tests grader,
  one at a time and as a batch (`score_many`, one process per CPU);
and the layers that took effect on this machine. RL scores many completions per step: the batch row
is the one to multiply.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tunery.graders import parse_grader  # noqa: E402
from tunery.graders import sandbox as sb  # noqa: E402

COMPLETION = "Here is the function:\n```python\ndef add(a, b):\n    return a + b\n```\nIt returns the sum."
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\nassert add(0.5, 0.25) == 0.75\n"


def per_run_ms(function, n: int) -> float:
    function()
    started = time.perf_counter()
    for _ in range(n):
        function()
    return round((time.perf_counter() - started) / n * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    grader = parse_grader("code_tests:10")
    record = {"tests": TESTS}
    assert grader.score(COMPLETION, None, record) == 1.0
    bare = [sys.executable, "-I", "-S", "-c", "pass"]
    batch_started = time.perf_counter()
    batch = grader.score_many([COMPLETION] * args.n, [None] * args.n, [record] * args.n)
    batch_ms = round((time.perf_counter() - batch_started) / args.n * 1000, 1)
    assert batch == [1.0] * args.n
    result = {
        "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0], "n": args.n,
        "bare_python_ms": per_run_ms(lambda: subprocess.run(bare, check=True), args.n),
        "sandbox_no_layer_ms": per_run_ms(lambda: sb.run_python("pass", sb.Limits(layers=())), args.n),
        "sandbox_all_layers_ms": per_run_ms(lambda: sb.run_python("pass"), args.n),
        "code_tests_one_at_a_time_ms": per_run_ms(lambda: grader.score(COMPLETION, None, record), args.n),
        "code_tests_batch_ms_per_completion": batch_ms,
        "layers": grader.param.layers(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
