"""Write the routing example: customer messages -> the team that handles them (a classification task).

Each message is built from our own templates and word lists; the answer is one word, the team:
`billing`, `shipping`, `technical` or `account`. The system message names the four teams, so the base
model can answer at all; it tends to explain instead of naming one word, and to confuse the teams on
messages that mention money and deliveries together, which is what fine-tuning has to fix.

The held-out messages use products, names and amounts that no training message uses (the lists are
split in two), so a held-out score measures the routing, not memorised messages.

Deterministic: the same seed writes the same bytes (a test regenerates the files and compares).

    python examples/routing/make_data.py          # writes train.jsonl and heldout.jsonl here
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYSTEM = ("Route the customer's message to one team: billing, shipping, technical or account. "
          "Answer with the team name only.")
PRODUCTS = ["kettle", "desk lamp", "blender", "backpack", "phone case", "coffee grinder", "monitor stand",
            "rice cooker", "yoga mat", "bike light", "toaster", "headphones", "air purifier", "office chair",
            "water bottle", "keyboard", "frying pan", "smart plug", "bookshelf", "electric fan"]
NAMES = ["Ada", "Bruno", "Chen", "Dara", "Eli", "Farah", "Goran", "Hiro", "Iris", "Jamal", "Kira", "Luis",
         "Mona", "Nils", "Olga", "Pavel", "Quinn", "Rosa", "Sami", "Tova"]
TEMPLATES = {
    "billing": [
        "I was charged twice for my {product} order. Can you refund one of the payments?",
        "My invoice shows {amount} but the {product} was on sale. Please correct the price.",
        "Hi, it's {name}. The payment for my {product} failed but the money left my account.",
        "Can I get a receipt with my company's tax number for the {product}?",
        "Why was I billed {amount} this month? I only bought a {product}.",
    ],
    "shipping": [
        "My {product} was supposed to arrive on Tuesday and it is still not here.",
        "The tracking number for my {product} does not work. Where is my parcel?",
        "{name} here: the box with my {product} arrived crushed. Can you send another one?",
        "Can you deliver the {product} to my office address instead of my home?",
        "I paid {amount} for express delivery and the {product} came a week late.",
    ],
    "technical": [
        "My {product} turns on but stops after a minute. What can I do?",
        "The app will not connect to my {product} over Wi-Fi.",
        "Hello, {name} here. The {product} makes a loud noise since yesterday.",
        "How do I reset the {product} to its factory settings?",
        "The display of my {product} shows an error code and nothing works.",
    ],
    "account": [
        "I cannot log in to my account since I changed my email address.",
        "Please delete my account and all the data you keep about me, {name}.",
        "How do I change the password of my account? I bought a {product} last week.",
        "Someone else seems to be using my account: there is an order for a {product} I did not make.",
        "I want to merge my two accounts into one. Both have orders, one for a {product}.",
    ],
}


def split(items: list[str], heldout: bool) -> list[str]:
    """The first three quarters of a list for training, the rest held out."""
    cut = len(items) * 3 // 4
    return items[cut:] if heldout else items[:cut]


def message(rng: random.Random, team: str, heldout: bool) -> dict:
    template = rng.choice(TEMPLATES[team])
    amount = f"{rng.randint(12, 99) if not heldout else rng.randint(101, 400)} euros"
    text = template.format(product=rng.choice(split(PRODUCTS, heldout)), name=rng.choice(split(NAMES, heldout)),
                           amount=amount)
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text},
                         {"role": "assistant", "content": team}]}


def records(n: int, seed: int, heldout: bool) -> list[dict]:
    rng = random.Random(seed)
    teams = sorted(TEMPLATES)
    out, seen = [], set()
    while len(out) < n:
        record = message(rng, teams[len(out) % len(teams)], heldout)
        key = record["messages"][1]["content"]
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    for name, n, seed, heldout in (("train", 240, 7, False), ("heldout", 80, 8, True)):
        path = args.out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records(n, seed, heldout)), encoding="utf-8")
        print(f"wrote {path}: {n} messages")


if __name__ == "__main__":
    main()
