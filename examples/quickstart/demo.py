"""`make demo`: check the data, fine-tune SmolLM2-135M-Instruct with LoRA, compare base and tuned.

Three steps, each what a user would type:

1. `tunery data check train.jsonl --validation heldout.jsonl` (lint before spending compute)
2. `tunery train examples/quickstart/config.yaml --resume` (a few minutes on 2 CPU cores; running
   the demo again continues an interrupted run, or skips training when the run has finished)
3. exact match of base and tuned model on heldout.jsonl, plus a few answers side by side

Run from the repository root: the run folder goes to `runs/quickstart/` under the current folder.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config.yaml"
TRAIN = HERE / "train.jsonl"
HELDOUT = HERE / "heldout.jsonl"
BASE = "smollm2-135m-instruct"
# References are at most ~30 tokens; the base model's rambling is cut here so scoring stays quick.
MAX_NEW_TOKENS = 40


def shown(path: Path) -> str:
    """`path` relative to the current folder when it lies inside it (what a user would type)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def tunery(*args: str) -> int:
    """Run a `tunery` command in a child process, its output going straight to the terminal."""
    command = [sys.executable, "-m", "tunery.cli.main", *args]
    print(f"\n$ tunery {' '.join(args)}", flush=True)
    return subprocess.call(command)


def run_dir() -> Path:
    """Where `tunery train` puts this config's run folder (output.dir / output.name)."""
    from tunery.config.load import load_config

    output = load_config(CONFIG).config.output
    return Path(output.dir) / (output.name or CONFIG.stem)


def side_by_side(rows: list[dict], count: int = 3) -> str:
    """The first `count` held-out requests with the reference and each model's answer."""
    blocks = []
    for i in range(count):
        first = rows[0]["examples"][i]
        lines = [f"request:   {first['prompt']}", f"expected:  {first['reference']}"]
        for row in rows:
            answer = row["examples"][i]["answer"].replace("\n", " ")
            label = "base:" if row["target"] == BASE else "tuned:"
            lines.append(f"{label:<10} {textwrap.shorten(answer, 110, placeholder=' ...')}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def compare(run: Path) -> None:
    """Print base vs tuned exact match on the held-out file, and three examples."""
    from tunery.eval.quick import exact_match_table, format_table

    print(f"\nscoring {BASE} and {run} on {HELDOUT.name} (greedy, exact match) ...", flush=True)
    rows = exact_match_table([BASE, str(run)], HELDOUT, MAX_NEW_TOKENS)
    print("\n" + format_table(rows) + "\n")
    print(side_by_side(rows))


def main() -> int:
    if tunery("data", "check", shown(TRAIN), "--validation", shown(HELDOUT), "--model", BASE) != 0:
        print("the data check failed; fix the files above (or regenerate them with make_data.py)")
        return 1
    code = tunery("train", shown(CONFIG), "--resume")
    if code != 0:
        print(f"training stopped (exit code {code}); run the demo again to resume it")
        return code
    compare(run_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
