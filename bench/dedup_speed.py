"""How long duplicate detection among raw-text documents takes, and what it finds.

    python bench/dedup_speed.py                 # 5,000 documents of ~300 words
    python bench/dedup_speed.py --docs 20000

Documents are drawn from a Zipf-like vocabulary of 30,000 words (seeded), so that unrelated documents
share common words as real text does. Then copies are planted: 1% with one word in 100 changed
(word 5-gram Jaccard ~0.90 with the original), 1% with one in 60 changed (~0.84, near the 0.8
threshold, where a 128-value MinHash estimate errs by about 0.03), and 1% with only case and
whitespace changed (exact). Reports the time of `duplicate_groups` in `exact` and `near` mode, how many
planted copies of each kind it found, and how many pairs it reported that were not planted. A last
row times the worst case of banding: 3,000 variants of one template (3 random words changed each), all
falling in the same buckets.
Results go to bench/results/dedup_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tunery.data.dedup import duplicate_groups  # noqa: E402


def corpus(count: int, words: int, seed: int = 0) -> tuple[list[str], dict[tuple[int, int], str]]:
    """``count`` documents plus planted copies, and the (original, copy) index pairs with their kind."""
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(30000)]
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]
    texts = [" ".join(rng.choices(vocabulary, weights, k=words)) for _ in range(count)]
    planted = {}
    for every in (100, 60):
        for original in rng.sample(range(count), count // 100):
            edited = [w if i % every != every // 2 else "edited" for i, w in enumerate(texts[original].split())]
            planted[(original, len(texts))] = f"one word in {every} changed"
            texts.append(" ".join(edited))
    for original in rng.sample(range(count), count // 100):
        planted[(original, len(texts))] = "case and whitespace changed"
        texts.append("  " + texts[original].upper().replace(" ", "\n"))
    return texts, planted


def jaccard(a: str, b: str, n: int = 5) -> float:
    def shingles(text):
        words = text.casefold().split()
        return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}
    left, right = shingles(a), shingles(b)
    return len(left & right) / len(left | right)


def run(texts: list[str], planted: dict, mode: str) -> dict:
    started = time.perf_counter()
    groups = duplicate_groups(texts, mode)
    seconds = time.perf_counter() - started
    pairs = {(g.members[0], m) for g in groups for m in g.members[1:]}
    found = {}
    for pair, kind in planted.items():
        total, hits = found.get(kind, (0, 0))
        found[kind] = (total + 1, hits + (pair in pairs))
    return {"mode": mode, "seconds": round(seconds, 2), "groups": len(groups),
            "planted_found": {kind: f"{hits} of {total}" for kind, (total, hits) in found.items()},
            "pairs_not_planted": len(pairs - set(planted))}


def template_case(count: int = 3000, words: int = 300, seed: int = 1) -> dict:
    rng = random.Random(seed)
    base = [f"w{rng.randrange(5000)}" for _ in range(words)]
    texts = []
    for _ in range(count):
        variant = list(base)
        for _ in range(3):
            variant[rng.randrange(words)] = f"x{rng.randrange(10**6)}"
        texts.append(" ".join(variant))
    started = time.perf_counter()
    groups = duplicate_groups(texts, "near")
    return {"mode": "near", "case": f"{count} variants of one template", "seconds": round(time.perf_counter() - started, 2),
            "groups": [len(g.members) for g in groups]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=5000)
    parser.add_argument("--words", type=int, default=300)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "dedup_speed.json"))
    args = parser.parse_args()
    texts, planted = corpus(args.docs, args.words)
    rows = [run(texts, planted, mode) for mode in ("exact", "near")] + [template_case()]
    similarity = {}
    for (original, copy), kind in planted.items():
        similarity.setdefault(kind, []).append(jaccard(texts[original], texts[copy]))
    similarity = {kind: round(sum(v) / len(v), 3) for kind, v in similarity.items()}
    print(f"mean word 5-gram Jaccard of the planted copies: {similarity}")
    for row in rows:
        print(json.dumps(row))
    report = {"what": "duplicate_groups on raw-text documents (tunery.data.dedup)",
              "command": "python bench/dedup_speed.py " + " ".join(sys.argv[1:]),
              "documents": len(texts), "words_per_document": args.words,
              "planted_mean_jaccard": similarity,
              "python": platform.python_version(), "cpus": os.cpu_count(), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
