"""tunery's built-in pool of general prompts for `data.replay: self`.

Replay keeps a tuned model near what it could do before: a share of each training set is general
conversations, here the base model's own answers to these prompts (`tunery.trainers.replay`). The
prompts are written by the templates below, crossed with small word lists, in a fixed seeded order, so
the pool is the same on every machine. They ask for the everyday things an instruct model is used for
(explaining, listing, rewriting, short arithmetic, advice, small writing tasks) and are kept apart from
the forgetting probe's items (a test checks that no prompt of one is in the other), so that the probe
measures what replay protects rather than what it trained.
"""

from __future__ import annotations

import random

POOL_VERSION = 1  # part of the self-replay cache key: a changed pool is generated anew

TOPICS = ["rain", "photosynthesis", "a rainbow", "gravity", "the moon's phases", "a volcano", "tides",
          "recycling", "a heartbeat", "the water cycle", "a compass", "thunder", "bread rising", "rust",
          "a seed growing", "echoes", "wind", "ice melting", "a battery", "sleep"]
THINGS = ["a small garden", "a rainy afternoon", "the first day at school", "a train journey", "an old clock",
          "a lighthouse", "a market in the morning", "a winter walk", "a lost key", "a city at night"]
SKILLS = ["learning a new language", "saving money", "cooking rice", "staying focused", "writing a letter",
          "keeping a plant alive", "running a first 5 km", "organising a desk", "making new friends",
          "preparing for a test"]
SENTENCES = ["the meeting was moved to friday because the room was busy",
             "she bought apples pears and a loaf of bread at the shop",
             "our team finished the project two days early",
             "the museum opens at nine and closes at five",
             "he forgot his umbrella so he got wet on the way home",
             "the library has a quiet room on the second floor",
             "we planted three trees in the park last spring",
             "the bus was late and the streets were full of traffic"]
CATEGORIES = ["fruits", "colours", "musical instruments", "animals that live in the sea", "kitchen tools",
              "countries in South America", "things you can recycle", "board games", "vegetables", "planets"]

TEMPLATES = [
    ("topic", "Explain {x} to a ten-year-old in two sentences."),
    ("topic", "What causes {x}? Answer briefly."),
    ("topic", "Give one everyday example that shows {x}, in one sentence."),
    ("thing", "Write a four-line poem about {x}."),
    ("thing", "Describe {x} in three sentences."),
    ("thing", "Write the first two sentences of a short story about {x}."),
    ("skill", "Give three short tips for {x}."),
    ("skill", "What is a common mistake when {x}, and how can it be avoided?"),
    ("skill", "Write a short, friendly message encouraging a friend who is {x}."),
    ("sentence", "Rewrite this sentence with correct capitals and punctuation: {x}"),
    ("sentence", "Summarise in at most eight words: {x}"),
    ("sentence", "Turn this into a question: {x}"),
    ("category", "List four {x}, separated by commas."),
    ("category", "Name two {x} and say one thing about each."),
    ("category", "Tell me one interesting fact about {x}."),
    ("sum", "A shop sells pencils at {a} cents each. How much do {b} pencils cost? Show the calculation."),
    ("sum", "I had {a} marbles and gave away {b}. How many are left? Explain in one sentence."),
]


def _fills(kind: str, rng: random.Random) -> list[dict]:
    words = {"topic": TOPICS, "thing": THINGS, "skill": SKILLS, "sentence": SENTENCES, "category": CATEGORIES}
    if kind in words:
        return [{"x": x} for x in words[kind]]
    return [{"a": a, "b": b} for a, b in ((rng.randint(12, 60), rng.randint(2, 11)) for _ in range(30))]


def general_prompts(seed: int = 0) -> list[str]:
    """Every prompt of the pool, in a fixed shuffled order (each distinct)."""
    rng = random.Random(seed)
    prompts = [template.format(**fill) for kind, template in TEMPLATES for fill in _fills(kind, rng)]
    prompts = list(dict.fromkeys(prompts))
    rng.shuffle(prompts)
    return prompts
