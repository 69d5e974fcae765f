"""`make demo`: check the data, fine-tune SmolLM2-135M-Instruct with LoRA, compare base and tuned.

Three steps, each what a user would type:

1. `tunery data check train.jsonl --validation heldout.jsonl` (lint before spending compute)
2. `tunery train examples/quickstart/config.yaml --resume` (a few minutes on 2 CPU cores; running
   the demo again continues an interrupted run, or skips training when the run has finished)
3. `tunery eval runs/quickstart --data heldout.jsonl` against the base model zero-shot (exact match,
   with intervals and a paired test, and answers where the two disagree)

Run from the repository root: the run folder goes to `runs/quickstart/` under the current folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config.yaml"
TRAIN = HERE / "train.jsonl"
HELDOUT = HERE / "heldout.jsonl"
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


def main() -> int:
    if tunery("data", "check", shown(TRAIN), "--validation", shown(HELDOUT)) != 0:
        print("the data check failed; fix the files above (or regenerate them with make_data.py)")
        return 1
    code = tunery("train", shown(CONFIG), "--resume")
    if code != 0:
        print(f"training stopped (exit code {code}); run the demo again to resume it")
        return code
    return tunery("eval", shown(run_dir()), "--data", shown(HELDOUT), "--baselines", "zero", "--graders", "exact",
                  "--probe", "none", "--max-new-tokens", str(MAX_NEW_TOKENS))


if __name__ == "__main__":
    sys.exit(main())
