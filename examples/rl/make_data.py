"""Write the RL example's data: one-step word problems (add or take away) with their numeric answers.

Each record serves every method on the same prompts:

    {"prompt": "Mia has 7 shells and finds 5 more. How many shells does Mia have now?",
     "completion": "Mia has 12 shells now.", "answer": "12"}

- `method: sft` trains on `prompt` -> `completion`: a demonstration that states the answer, as most
  reference answers do.
- `method: rl` samples its own answers to `prompt` and rewards them with graders that read `answer`
  (`numeric`: the answer's last number is right; `max_words:N`: it is short). Many answers are right
  ("7 + 5 = 12, so Mia has 12 shells."), not only the demonstration.
- `tunery eval` scores greedy answers to heldout.jsonl with the same graders (the completion is the
  reference; its last number is the answer).

Held-out problems use names that no training problem uses, so no held-out prompt was seen in training.
Deterministic: the same seed writes the same bytes (a test regenerates the files and compares).

    python examples/rl/make_data.py            # writes train.jsonl and heldout.jsonl here
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TRAIN_NAMES = [
    "Tom", "Ana", "Ravi", "Mei", "Lars", "Zara", "Omar", "Lena", "Hugo", "Nadia", "Emil", "Priya",
    "Diego", "Chloe", "Kwame", "Ines", "Jonas", "Amara", "Felix", "Yuki",
]
HELDOUT_NAMES = ["Mia", "Sam", "Aiko", "Pablo", "Greta", "Malik", "Clara", "Tariq", "Noor", "Victor"]
THINGS = ["apples", "marbles", "stickers", "books", "coins", "shells", "pencils", "cards", "stamps", "cookies"]

# (question, demonstration) templates; {a} and {b} are the numbers, {c} the answer.
ADD = [
    ("{n} has {a} {t} and gets {b} more. How many {t} does {n} have now?", "{n} has {c} {t} now."),
    ("{n} has {a} {t} and finds {b} more. How many {t} does {n} have now?", "{n} has {c} {t} now."),
    ("{n} had {a} {t}. Then {n} bought {b} more. How many {t} does {n} have now?", "{n} has {c} {t} now."),
    ("There are {a} {t} in a box. {n} puts in {b} more. How many {t} are in the box now?",
     "There are {c} {t} in the box now."),
]
TAKE = [
    ("{n} has {a} {t} and gives {b} away. How many {t} does {n} have left?", "{n} has {c} {t} left."),
    ("{n} had {a} {t} and lost {b} of them. How many {t} does {n} have left?", "{n} has {c} {t} left."),
    ("There are {a} {t} in a box. {n} takes out {b}. How many {t} are in the box now?",
     "There are {c} {t} in the box now."),
]


def make_problem(rng: random.Random, names: list[str]) -> dict:
    """One word problem: half add (2-15 plus 2-9), half take away (6-19 minus 2-9, never below 1)."""
    name, things = rng.choice(names), rng.choice(THINGS)
    if rng.random() < 0.5:
        a, b = rng.randint(2, 15), rng.randint(2, 9)
        question, demo, answer = *rng.choice(ADD), a + b
    else:
        a = rng.randint(6, 19)
        b = rng.randint(2, min(9, a - 1))
        question, demo, answer = *rng.choice(TAKE), a - b
    fields = dict(n=name, t=things, a=a, b=b, c=answer)
    return {"prompt": question.format(**fields), "completion": demo.format(**fields), "answer": str(answer)}


def make_split(n: int, names: list[str], rng: random.Random, seen: set[str]) -> list[dict]:
    """`n` problems whose prompts are not in `seen` (which they are added to)."""
    records: list[dict] = []
    while len(records) < n:
        record = make_problem(rng, names)
        if record["prompt"] not in seen:
            seen.add(record["prompt"])
            records.append(record)
    return records


def write_jsonl(path: Path, records: list[dict]) -> None:
    """One record per line, UTF-8, "\\n" line ends on every platform (the bytes are compared in tests)."""
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--heldout", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rng, seen = random.Random(args.seed), set()
    train = make_split(args.train, TRAIN_NAMES, rng, seen)
    heldout = make_split(args.heldout, HELDOUT_NAMES, rng, seen)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "heldout.jsonl", heldout)
    print(f"wrote {len(train)} training and {len(heldout)} held-out problems to {args.out}")


if __name__ == "__main__":
    main()
