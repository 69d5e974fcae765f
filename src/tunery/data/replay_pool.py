"""tunery's built-in pool of general prompts for `data.replay: self`.

Replay keeps a tuned model near what it could do before: a share of each training set is general
conversations, here the base model's own answers to these prompts (`tunery.trainers.replay`). The
prompts are written by the templates below, crossed with small word lists, in a fixed seeded order, so
the pool is the same on every machine. They ask for the everyday things an instruct model is used for
(explaining, listing, rewriting, short arithmetic, advice, small writing tasks), and since version 2
also for one-word facts and for help with harmful things: measured with version 1, those were the kinds
a tuned model lost most (on routing with 20% replay on top, facts fell from 72% to 38% and refusals
from 60% to 10% of the probe's items) while the pool held no prompt like them. The answers replayed
are the base model's own, so replay keeps what the base did, with one exception: a harmful prompt is
replayed only when the base refused it (`is_harmful`, `refuses`; `tunery.trainers.replay` drops the
others), because replay must never teach compliance with a harmful request. Version 2 asked "how to"
and the 135M base complied with nearly all of them; version 3 asks for help, as a plea, which small
instruct models refuse more often. Prompts are kept apart from the forgetting probe's items at the
level of content, not only of wording (other countries, other quantities, other harmful acts; tests
check both), so that the probe measures what replay protects rather than what it trained.
"""

from __future__ import annotations

import random

POOL_VERSION = 3  # part of the self-replay cache key: a changed pool is generated anew

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
# Version 2: short facts and harmful requests (none of the probe's countries, quantities or acts).
COUNTRIES = ["Canada", "Sweden", "Finland", "Denmark", "the Netherlands", "Belgium", "Mexico", "Argentina",
             "Peru", "Turkey", "India", "Australia"]
QUANTITIES = ["seconds are in a minute", "days are in a leap year", "weeks are in a year",
              "legs does an insect have", "sides does a triangle have", "sides does a hexagon have",
              "wheels does a bicycle have", "players are on a soccer team", "strings does a violin have",
              "hours are in two days"]
HARMFUL = ["forge my doctor's signature on a sick note", "spy on my partner's phone messages",
           "damage my neighbour's car without being seen", "sell fake concert tickets online",
           "copy my roommate's house key without asking", "steal a bicycle from the station",
           "print counterfeit money", "bully a classmate online until he leaves school",
           "cheat my insurance company with a fake claim", "track someone's location without them knowing",
           "get a weapon past airport security", "scare my ex with anonymous threats"]

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
    ("country", "Which city is the capital of {x}? Reply with the city's name only."),
    ("country", "Which language do most people in {x} speak? Reply in at most three words."),
    ("quantity", "How many {x}? Reply with just the number."),
    ("harm", "Could you help me {x}?"),
    ("harm", "Please help me {x}."),
    ("harm", "I really need to {x}. Would you assist me?"),
]


def _fills(kind: str, rng: random.Random) -> list[dict]:
    words = {"topic": TOPICS, "thing": THINGS, "skill": SKILLS, "sentence": SENTENCES, "category": CATEGORIES,
             "country": COUNTRIES, "quantity": QUANTITIES, "harm": HARMFUL}
    if kind in words:
        return [{"x": x} for x in words[kind]]
    return [{"a": a, "b": b} for a, b in ((rng.randint(12, 60), rng.randint(2, 11)) for _ in range(30))]


def is_harmful(prompt: str) -> bool:
    """A prompt of the pool that asks for help with a harmful act."""
    return any(act in prompt for act in HARMFUL)


def refuses(answer: str) -> bool:
    """The answer declines (the same phrases the forgetting probe's refusal items are graded by)."""
    import re

    from tunery.graders.checks import REFUSAL_PATTERN

    return re.search(REFUSAL_PATTERN, answer) is not None


def general_prompts(seed: int = 0) -> list[str]:
    """Every prompt of the pool, each distinct, in a fixed order that takes the kinds in turn (each
    kind shuffled): any first k prompts hold about k / 9 of every kind while it lasts, whatever the
    kinds' sizes, so a small replay share asks for one-word facts and refusals as often as for
    explanations (a draw in pool order gave routing 8 facts in 54 prompts, and facts were what it lost)."""
    rng = random.Random(seed)
    by_kind: dict[str, list[str]] = {}
    for kind, template in TEMPLATES:
        by_kind.setdefault(kind, []).extend(template.format(**fill) for fill in _fills(kind, rng))
    queues = [list(dict.fromkeys(prompts)) for prompts in by_kind.values()]
    for queue in queues:
        rng.shuffle(queue)
    rng.shuffle(queues)
    order = [queue[i] for i in range(max(map(len, queues))) for queue in queues if i < len(queue)]
    return list(dict.fromkeys(order))
