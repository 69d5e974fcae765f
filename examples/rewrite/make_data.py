"""Write the rewrite example: a casual meeting note -> one calendar line in the house style (short
free-text generation with one right answer, graded `exact`).

The house style is `Tuesday 15:00 - Kettle budget with Ada`: the day capitalised, the time on a
24-hour clock as HH:MM, then the topic with its first letter capitalised, then `with` and the person.
The notes say the same things in many ways: `3pm`, `3 in the afternoon`, `half past 2`, `15:00`;
`w/`, `with`, `and I`; the parts in any order, with filler words. The model has to normalise, not copy.

The held-out notes use people and topics no training note uses (each list is split in two).
Deterministic: the same seed writes the same bytes (a test regenerates the files and compares).

    python examples/rewrite/make_data.py          # writes train.jsonl and heldout.jsonl here
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYSTEM = ("Rewrite the note as one calendar line in the house style: Day HH:MM - Topic with Person "
          "(24-hour time, e.g. Tuesday 15:00 - Kettle budget with Ada).")
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday"]
NAMES = ["Ada", "Bruno", "Chen", "Dara", "Eli", "Farah", "Goran", "Hiro", "Iris", "Jamal", "Kira", "Luis",
         "Mona", "Nils", "Olga", "Pavel", "Quinn", "Rosa", "Sami", "Tova"]
TOPICS = ["kettle budget", "team lunch", "quarterly report", "website launch", "hiring plan", "office move",
          "supplier contract", "training day", "product demo", "holiday rota", "safety check", "price list",
          "customer survey", "server upgrade", "press release", "stock count"]
NOTES = [
    "can we meet {day} at {time} with {name} about the {topic}?",
    "{name} and I need to talk {topic} on {day}, {time}",
    "lets do {topic} w/ {name} {day} {time}",
    "reminder: {topic}, {day} {time}, with {name}",
    "{day} {time} - catch up with {name} re {topic}",
    "put in {topic} with {name} for {day} around {time} pls",
    "meeting w/ {name} on {day} at {time} to go over the {topic}",
    "{time} on {day}: {name} wants to discuss the {topic}",
]


def split(items: list[str], heldout: bool) -> list[str]:
    """The first three quarters of a list for training, the rest held out."""
    cut = len(items) * 3 // 4
    return items[cut:] if heldout else items[:cut]


def spoken(hour: int, minute: int, rng: random.Random) -> str:
    """The time as a note would say it; hour on a 24-hour clock, 8 to 18."""
    twelve = hour - 12 if hour > 12 else hour
    suffix = "am" if hour < 12 else "pm"
    if minute == 30:
        return rng.choice([f"half past {twelve}", f"{twelve}:30{suffix}", f"{hour}:30"])
    return rng.choice([f"{twelve}{suffix}", f"{twelve} {suffix}", f"{hour}:00",
                       f"{twelve} in the {'morning' if hour < 12 else 'afternoon'}"])


def record(rng: random.Random, heldout: bool) -> dict:
    day, name, topic = rng.choice(DAYS), rng.choice(split(NAMES, heldout)), rng.choice(split(TOPICS, heldout))
    hour, minute = rng.randint(8, 17), rng.choice([0, 0, 30])
    if minute == 30 and hour in (12, 13):
        minute = 0  # "half past 12/1" reads either way: keep the notes unambiguous
    note = rng.choice(NOTES).format(day=day if rng.random() < 0.5 else day.capitalize(), name=name, topic=topic,
                                    time=spoken(hour, minute, rng))
    line = f"{day.capitalize()} {hour:02d}:{minute:02d} - {topic[0].upper()}{topic[1:]} with {name}"
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": note},
                         {"role": "assistant", "content": line}]}


def records(n: int, seed: int, heldout: bool) -> list[dict]:
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        r = record(rng, heldout)
        if r["messages"][1]["content"] not in seen:
            seen.add(r["messages"][1]["content"])
            out.append(r)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    for name, n, seed, heldout in (("train", 240, 21, False), ("heldout", 160, 22, True)):
        path = args.out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records(n, seed, heldout)), encoding="utf-8")
        print(f"wrote {path}: {n} notes")


if __name__ == "__main__":
    main()
