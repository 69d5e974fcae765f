"""Write the quickstart data set: hotel-booking requests -> one compact JSON object per request.

Each request is a sentence built from our own templates and word lists; the answer is
`{"name": "...", "city": "...", "nights": N}` with the keys in that order and `nights` a number, even
when the request spells it out ("five nights", "a week"). The small base model knows what JSON is but
does not keep this exact shape, so exact match measures whether fine-tuning taught it.

Deterministic: the same seed writes the same bytes (a test regenerates the files and compares).

    python examples/quickstart/make_data.py            # writes train.jsonl and heldout.jsonl here
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYSTEM = "Extract the hotel booking as JSON with the keys name, city, nights."

FIRST = [
    "Maria", "Tomas", "Aiko", "Priya", "Lars", "Fatima", "Diego", "Chloe", "Kwame", "Ingrid",
    "Mateo", "Yuki", "Omar", "Elena", "Ravi", "Sofia", "Jonas", "Amara", "Felix", "Leila",
    "Hugo", "Nadia", "Emil", "Zara", "Pablo", "Mei", "Oskar", "Ana", "Tariq", "Greta",
    "Ben", "Ines", "Malik", "Lena", "Arjun", "Clara", "Dmitri", "Noor", "Victor", "Hana",
]
LAST = [
    "Lopez", "Novak", "Tanaka", "Sharma", "Berg", "Haddad", "Ramos", "Martin", "Mensah", "Larsen",
    "Silva", "Kato", "Farouk", "Petrova", "Iyer", "Costa", "Weber", "Okafor", "Brandt", "Karimi",
    "Moreau", "Ivanova", "Lindqvist", "Ahmed", "Herrera", "Chen", "Nilsson", "Pereira", "Aziz", "Vogel",
    "Walsh", "Duarte", "Bello", "Richter", "Nair", "Dubois", "Sokolov", "Rahman", "Castillo", "Mori",
]
CITIES = [
    "Lisbon", "Oslo", "Kyoto", "Madrid", "Nairobi", "Prague", "Lima", "Dublin", "Seoul", "Tunis",
    "Vienna", "Quito", "Hanoi", "Porto", "Krakow", "Accra", "Bergen", "Cusco", "Tallinn", "Bologna",
    "New York", "Cape Town", "Buenos Aires", "Hong Kong", "San Diego", "Rio de Janeiro", "Las Palmas",
    "Mexico City", "Kuala Lumpur", "Tel Aviv", "Salt Lake City", "St. Petersburg",
]
WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
         9: "nine", 10: "ten", 11: "eleven", 12: "twelve", 14: "fourteen"}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["March", "April", "May", "June", "July", "August", "September", "October"]

# {name} {city} {stay} are required; {day}, {date} and {guests} are distractors that carry numbers
# or words the answer must not pick up.
TEMPLATES = [
    "Hi, this is {name}. I need a room in {city} for {stay}.",
    "Please book {stay} in {city} under the name {name}.",
    "{name} will be staying in {city} for {stay}.",
    "Reservation request: {city}, {stay}, guest {name}.",
    "Could you reserve a hotel in {city}? It is for {name}, {stay}.",
    "I'm {name} and I arrive in {city} on {day}; I am staying {stay}.",
    "We need {stay} in {city} for {guests} people. The booking is for {name}.",
    "Guest: {name}. Destination: {city}. Length of stay: {stay}.",
    "{name} here, looking for a place in {city}, {stay} starting {date}.",
    "Book me into something in {city} for {stay}, please. Name's {name}.",
    "My colleague {name} is travelling to {city} and needs a hotel for {stay}.",
    "From {date}, {stay} in {city}, {guests} guests, booked by {name}.",
    "Can I get a double room in {city} for {stay}? Checking in {day}. It's {name}.",
    "{city} trip for {name}: please hold a room for {stay}.",
]


def stay_phrase(nights: int, rng: random.Random) -> str:
    """`nights` as people write it: digits, words, or "a week" / "a fortnight"."""
    if nights == 7 and rng.random() < 0.4:
        return "a week"
    if nights == 14 and rng.random() < 0.5:
        return "a fortnight"
    unit = "night" if nights == 1 else "nights"
    if nights in WORDS and rng.random() < 0.45:
        return f"{WORDS[nights]} {unit}"
    return f"{nights} {unit}"


def make_example(rng: random.Random) -> dict:
    """One request and its answer, as an OpenAI-style `messages` record."""
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    city = rng.choice(CITIES)
    nights = rng.choice([1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 7, 8, 9, 10, 12, 14, 14])
    fields = dict(
        name=name, city=city, stay=stay_phrase(nights, rng), day=rng.choice(DAYS),
        date=f"{rng.choice(MONTHS)} {rng.randint(1, 28)}", guests=rng.randint(2, 5),
    )
    request = rng.choice(TEMPLATES).format(**fields)
    answer = json.dumps({"name": name, "city": city, "nights": nights}, ensure_ascii=False)
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": request},
            {"role": "assistant", "content": answer},
        ]
    }


def make_splits(n_train: int, n_heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Distinct requests, split so that no held-out request (nor its person) appears in training."""
    rng = random.Random(seed)
    train: list[dict] = []
    heldout: list[dict] = []
    seen: set[str] = set()
    heldout_names: set[str] = set()
    train_names: set[str] = set()
    while len(train) < n_train or len(heldout) < n_heldout:
        example = make_example(rng)
        request = example["messages"][1]["content"]
        name = json.loads(example["messages"][2]["content"])["name"]
        if request in seen:
            continue
        seen.add(request)
        if len(heldout) < n_heldout and name not in train_names | heldout_names and rng.random() < 0.2:
            heldout.append(example)
            heldout_names.add(name)
        elif len(train) < n_train and name not in heldout_names:
            train.append(example)
            train_names.add(name)
    return train, heldout


def write_jsonl(path: Path, records: list[dict]) -> None:
    """One record per line, UTF-8, "\\n" line ends on every platform (the bytes are compared in tests)."""
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--train", type=int, default=320)
    parser.add_argument("--heldout", type=int, default=40)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)
    train, heldout = make_splits(args.train, args.heldout, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "heldout.jsonl", heldout)
    print(f"wrote {len(train)} training and {len(heldout)} held-out examples to {args.out}")


if __name__ == "__main__":
    main()
