"""A seeded chat set with varied lengths for the training benchmark (our own word lists, no copied text).

Single-turn conversations (user -> assistant) so that every tool trains exactly the same tokens: the
assistant answer plus its end-of-turn token. Lengths vary widely (about 40 to 500 tokens with the
template), as real chat data does, so padding costs what it costs in practice.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SUBJECTS = ["the river", "our team", "a small bakery", "the old bridge", "this library", "the garden",
            "a new engine", "the city council", "my neighbour", "the weather station", "a violin maker",
            "the night train", "a mountain village", "the museum", "an open-source project"]
VERBS = ["describes", "changes", "repairs", "measures", "celebrates", "questions", "organises",
         "improves", "explains", "records", "protects", "compares"]
OBJECTS = ["the morning schedule", "every second step", "a careful plan", "the cost of bread",
           "its long history", "three simple rules", "the first results", "a quiet corner",
           "the annual report", "a set of small tools", "the spring festival", "local traditions"]
CONNECTORS = ["because", "although", "while", "so that", "after", "before", "and then", "even if"]


def sentence(rng: random.Random) -> str:
    """One grammatical sentence of 8 to 20 words."""
    parts = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)]
    if rng.random() < 0.6:
        parts += [rng.choice(CONNECTORS), rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)]
    text = " ".join(parts)
    return text[0].upper() + text[1:] + "."


def paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(sentence(rng) for _ in range(sentences))


def conversation(rng: random.Random) -> dict:
    """A question of 1-12 sentences and an answer of 1-16 (a long tail, like real chats)."""
    question = paragraph(rng, rng.choice([1, 1, 2, 3, 5, 8, 12])) + " What do you make of this?"
    answer = paragraph(rng, rng.choice([1, 2, 2, 3, 4, 6, 10, 16]))
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write_chat_set(folder: Path, n_train: int, n_heldout: int, seed: int = 0) -> tuple[Path, Path]:
    """Write chat_train.jsonl and chat_heldout.jsonl into `folder` (deterministic for a seed)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, count in (("chat_train.jsonl", n_train), ("chat_heldout.jsonl", n_heldout)):
        path = folder / name
        path.write_text("".join(json.dumps(conversation(rng)) + "\n" for _ in range(count)))
        paths.append(path)
    return paths[0], paths[1]


def long_conversation(rng: random.Random) -> dict:
    """A question of 8-16 sentences and an answer of 20-40: about 500 to 1,000 tokens with the template."""
    question = paragraph(rng, rng.randint(8, 16)) + " What do you make of this?"
    answer = paragraph(rng, rng.randint(20, 40))
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write_long_set(folder: Path, counts: dict[str, int], seed: int = 1) -> dict[str, Path]:
    """Write one file of long conversations per name in `counts` (e.g. train, val, heldout)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, count in counts.items():
        paths[name] = folder / f"long_{name}.jsonl"
        paths[name].write_text("".join(json.dumps(long_conversation(rng)) + "\n" for _ in range(count)))
    return paths
