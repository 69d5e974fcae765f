"""Write the preference example: short questions under a reply-format rule, as preference pairs.

Each record is a question (a fact stated in the question, then asked back) under one of four rules in the
system message, and two answers with the same content: the `chosen` one keeps the rule, the `rejected`
one is a plausible violation. The rules conflict on purpose, so that no rule-blind habit ranks every
pair correctly:

    answer only      chosen "Lima"                           rejected "Ana lives in Lima."
    full sentence    chosen "Ana lives in Lima."             rejected "Lima"
    capital letters  chosen "ANA LIVES IN LIMA."             rejected "Ana lives in Lima."
    lowercase        chosen "ana lives in lima."             rejected "Ana lives in Lima."

A plain sentence is rejected under three rules and chosen under one; a bare answer is chosen under one
rule and rejected under another. The 135M base model's likelihood prefers the shorter and the more
ordinary answer whatever the rule says, so it ranks most pairs wrongly; what a tuned model must learn is
to read the rule. The held-out pairs ask about people, places, things and numbers that no training pair
mentions (the word lists are split in two), so a held-out score measures the rule, not the content.

Deterministic: the same seed writes the same bytes (a test regenerates the files and compares).

    python examples/preference/make_data.py          # writes train.jsonl and heldout.jsonl here
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

RULES = {
    "short": "Reply with the answer only: no sentence, no punctuation.",
    "sentence": "Reply with one complete sentence that ends with a period.",
    "upper": "Reply in capital letters only.",
    "lower": "Reply in lowercase letters only.",
}
# The violation each rule is paired with: the answer a rule-blind model would most likely give.
REJECTED = {"short": "sentence", "sentence": "short", "upper": "sentence", "lower": "sentence"}

# Every list is split: the first part for training, the rest (never in a training pair) held out.
NAMES = ["Ana", "Ben", "Chloe", "Diego", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Lars",
         "Maya", "Nico", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wim", "Yara",
         "Zeno", "Aiko", "Bruno", "Carla", "Dara", "Emil", "Femi", "Gina"]
CITIES = ["Lima", "Oslo", "Kyoto", "Porto", "Accra", "Quito", "Hanoi", "Dublin", "Tunis", "Bergen", "Cusco",
          "Vienna", "Seoul", "Prague", "Nairobi", "Madrid", "Krakow", "Tallinn", "Bologna", "Lyon", "Riga",
          "Graz", "Pune", "Perth"]
THINGS = ["bike", "kite", "scarf", "lamp", "mug", "tent", "drum", "boat", "clock", "chair", "vase", "rug",
          "hat", "bag", "coat", "pen"]
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple", "grey", "brown", "pink",
           "silver"]
PETS = ["cat", "dog", "parrot", "rabbit", "turtle", "hamster", "goat", "pony"]
TRAIN_SHARE = 0.75


def split(words: list[str], heldout: bool) -> list[str]:
    cut = round(len(words) * TRAIN_SHARE)
    return words[cut:] if heldout else words[:cut]


def make_fact(rng: random.Random, heldout: bool) -> tuple[str, str, str]:
    """(question, short answer, the answer as a sentence), from one of five question shapes."""
    name, city = rng.choice(split(NAMES, heldout)), rng.choice(split(CITIES, heldout))
    thing, colour = rng.choice(split(THINGS, heldout)), rng.choice(split(COLOURS, heldout))
    pet = rng.choice(split(PETS, heldout))
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    shape = rng.randrange(5)
    if shape == 0:
        return f"{name} lives in {city}. Where does {name} live?", city, f"{name} lives in {city}."
    if shape == 1:
        return (f"{name} has a {colour} {thing}. What colour is the {thing}?", colour,
                f"The {thing} is {colour}.")
    if shape == 2:
        return f"{name} owns a {pet}. Which animal does {name} own?", pet, f"{name} owns a {pet}."
    if shape == 3:
        return (f"{name} bought {a} {thing}s and then {b} more. How many {thing}s does {name} have now?",
                str(a + b), f"{name} has {a + b} {thing}s now.")
    return f"{name} flew from {city} to meet a friend. Where did {name} fly from?", city, \
        f"{name} flew from {city}."


def formatted(kind: str, short: str, sentence: str) -> str:
    """The answer written the way `kind` asks."""
    return {"short": short, "sentence": sentence, "upper": sentence.upper(), "lower": sentence.lower()}[kind]


def make_pair(rng: random.Random, rule: str, heldout: bool) -> dict:
    """One preference record (TRL's explicit form: prompt messages, chosen and rejected strings)."""
    question, short, sentence = make_fact(rng, heldout)
    return {"prompt": [{"role": "system", "content": RULES[rule]}, {"role": "user", "content": question}],
            "chosen": formatted(rule, short, sentence), "rejected": formatted(REJECTED[rule], short, sentence)}


def make_split(n: int, rng: random.Random, heldout: bool) -> list[dict]:
    """`n` distinct pairs, the four rules in equal shares and shuffled."""
    rules = [rule for i in range(n) for rule in [list(RULES)[i % len(RULES)]]]
    rng.shuffle(rules)
    records, seen = [], set()
    for rule in rules:
        while True:
            record = make_pair(rng, rule, heldout)
            key = json.dumps(record, sort_keys=True)
            if key not in seen:
                seen.add(key)
                records.append(record)
                break
    return records


def write_jsonl(path: Path, records: list[dict]) -> None:
    """One record per line, UTF-8, "\\n" line ends on every platform (the bytes are compared in tests)."""
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--train", type=int, default=320)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    train, heldout = make_split(args.train, rng, heldout=False), make_split(args.heldout, rng, heldout=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "heldout.jsonl", heldout)
    print(f"wrote {len(train)} training and {len(heldout)} held-out pairs to {args.out}")


if __name__ == "__main__":
    main()
