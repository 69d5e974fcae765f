"""Overfitting and leakage signals, each turned into a warning a person can act on.

- Leakage: evaluation examples that also appear in the training data, exactly (same prompt and answer
  after normalising case and whitespace) or nearly (character 5-gram Jaccard similarity of prompt +
  answer at or above a threshold). A leaked example measures memory, not skill.
- Overfitting: from metrics.jsonl, the validation loss at each evaluation next to the mean training
  loss since the previous one; a validation loss that rose well above its best while the training
  loss kept falling is the classic sign.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

from tunery.data.messages import Example
from tunery.eval.items import EvalItem, prompt_text, split_example

NGRAM = 5
NEAR_THRESHOLD = 0.8


def _text(example: Example) -> str:
    _, answer = split_example(example)
    return re.sub(r"\s+", " ", f"{prompt_text(example)}\n{answer.content}".casefold()).strip()


def shingles(text: str, n: int = NGRAM) -> set[str]:
    """The set of character n-grams of `text` (the whole text when shorter than n)."""
    return {text[i:i + n] for i in range(max(1, len(text) - n + 1))}


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b| (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def nearest_training(items: list[EvalItem], pool: list[Example]) -> list[tuple[float, int | None]]:
    """For each item, (highest Jaccard similarity to a training example, that example's index).

    An inverted index from n-gram to training examples counts shared n-grams without comparing every
    pair of texts, which keeps large training files cheap.
    """
    sets = [shingles(_text(e)) for e in pool]
    index: dict[str, list[int]] = defaultdict(list)
    for i, grams in enumerate(sets):
        for gram in grams:
            index[gram].append(i)
    out = []
    for item in items:
        grams = shingles(_text(item.example))
        shared = Counter(j for gram in grams for j in index.get(gram, ()))
        best, best_j = 0.0, None
        for j in sorted(shared):  # in file order, so ties go to the earlier training example
            score = shared[j] / (len(grams) + len(sets[j]) - shared[j])
            if score > best:
                best, best_j = score, j
        out.append((best, best_j))
    return out


def leakage(items: list[EvalItem], pool: list[Example], threshold: float = NEAR_THRESHOLD) -> dict:
    """Exact and near-duplicate overlap between evaluation items and training examples."""
    if not pool:
        return {"checked": False, "exact": 0, "near": 0, "threshold": threshold, "pairs": [], "warning": None}
    train_texts = {_text(e): i for i, e in enumerate(pool)}
    nearest = nearest_training(items, pool)
    pairs = []
    for item, (sim, j) in zip(items, nearest):
        exact = _text(item.example) in train_texts
        if exact or sim >= threshold:
            match = pool[train_texts[_text(item.example)]] if exact else pool[j]
            pairs.append({"eval": item.id, "train": match.location, "similarity": round(1.0 if exact else sim, 4),
                          "exact": exact})
    exact_n = sum(p["exact"] for p in pairs)
    near_n = len(pairs) - exact_n
    sims = [s for s, _ in nearest]
    warning = None
    if pairs:
        warning = (f"{exact_n} evaluation example(s) also appear in the training data and {near_n} more are "
                   f"near-duplicates (character {NGRAM}-gram Jaccard >= {threshold}) of {len(items)}: "
                   "scores on them measure memory, not skill")
    return {"checked": True, "exact": exact_n, "near": near_n, "threshold": threshold, "pairs": pairs,
            "max_similarity": round(max(sims), 4) if sims else None,
            "mean_nearest_similarity": round(sum(sims) / len(sims), 4) if sims else None,
            "warning": warning}


def loss_gap(metrics: list[dict]) -> list[dict]:
    """At each evaluation: step, validation loss, mean training loss since the previous evaluation, gap."""
    points, window = [], []
    for record in metrics:
        if record.get("kind") == "train" and record.get("loss") is not None:
            window.append(record["loss"])
        elif record.get("kind") == "eval" and record.get("val_loss") is not None:
            train = sum(window) / len(window) if window else None
            gap = record["val_loss"] - train if train is not None else None
            points.append({"step": record["step"], "val_loss": record["val_loss"], "train_loss": train,
                           "gap": gap})
            window = []
    return points


def overfitting(metrics: list[dict], rise: float = 0.1) -> dict:
    """The gap over time, and a warning when the last validation loss is more than `rise` (relative)
    above the best one while training loss went on falling after the best."""
    points = loss_gap(metrics)
    result = {"points": points, "warning": None}
    if len(points) < 2:
        return result
    best = min(points, key=lambda p: p["val_loss"])
    last = points[-1]
    after = [p for p in points if p["step"] > best["step"] and p["train_loss"] is not None]
    train_fell = bool(after) and best["train_loss"] is not None and after[-1]["train_loss"] < best["train_loss"]
    if last["val_loss"] > best["val_loss"] * (1 + rise) and train_fell:
        result["warning"] = (
            f"validation loss rose from {best['val_loss']:.3f} (step {best['step']}) to {last['val_loss']:.3f} "
            f"(step {last['step']}) while training loss fell to {after[-1]['train_loss']:.3f}: signs of "
            "overfitting (the best weights were kept; fewer steps or more data would help)")
    return result
