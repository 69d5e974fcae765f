"""Intervals and paired tests for per-example scores.

- `bootstrap_ci`: percentile bootstrap of the mean (Efron & Tibshirani, *An Introduction to the
  Bootstrap*, 1993, ch. 13), seeded so a report is reproducible.
- `mcnemar_exact`: for pass/fail scores of two systems on the same examples, the exact two-sided
  binomial test on the discordant pairs (McNemar 1947, exact form): only examples where exactly one
  system passes carry information, and under "no difference" each way is equally likely.
- `paired_bootstrap`: for any scores, the bootstrap of the mean paired difference; the two-sided
  p-value is twice the share of resampled differences on the far side of zero (Koehn 2004 uses
  the same resampling for MT systems).
`compare_paired` picks the exact test when every score is 0 or 1, and the bootstrap otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """Mean of per-example scores with a bootstrap interval at `level`."""

    mean: float
    low: float
    high: float
    n: int
    level: float = LEVEL

    def to_json(self) -> dict:
        return asdict(self)


def _resampled_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(resamples, len(values)))
    return values[picks].mean(axis=1)


def bootstrap_ci(values, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of `values` (same seed, same interval)."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, level)
    means = _resampled_means(arr, resamples, seed)
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(arr.mean()), float(low), float(high), int(arr.size), level)


def mcnemar_exact(a, b) -> tuple[float, int, int]:
    """(two-sided p, wins of a, wins of b) of the exact McNemar test on paired pass/fail scores."""
    wins_a = sum(1 for x, y in zip(a, b) if x > y)
    wins_b = sum(1 for x, y in zip(a, b) if y > x)
    n = wins_a + wins_b
    if n == 0:
        return 1.0, 0, 0
    k = min(wins_a, wins_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail), wins_a, wins_b


def paired_bootstrap(a, b, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> tuple[float, Interval]:
    """(two-sided p, interval of mean(a - b)) by resampling examples, keeping pairs together."""
    diff = np.asarray(list(a), dtype=float) - np.asarray(list(b), dtype=float)
    if diff.size == 0:
        return 1.0, Interval(math.nan, math.nan, math.nan, 0, level)
    means = _resampled_means(diff, resamples, seed)
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    if np.all(diff == 0):
        p = 1.0
    else:
        p = min(1.0, 2.0 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return p, Interval(float(diff.mean()), float(low), float(high), int(diff.size), level)


def is_binary(values) -> bool:
    return all(v in (0.0, 1.0) for v in values)


def compare_paired(a, b, seed: int = 0, alpha: float = 0.05) -> dict:
    """Is `a` different from `b` on the same examples? Difference with its interval, p, test name."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths ({len(a)} vs {len(b)})")
    p_boot, diff = paired_bootstrap(a, b, seed=seed)
    result = {"diff": diff.mean, "diff_low": diff.low, "diff_high": diff.high, "n": diff.n}
    if is_binary(a) and is_binary(b):
        p, wins_a, wins_b = mcnemar_exact(a, b)
        result |= {"test": "mcnemar_exact", "p": p, "wins_a": wins_a, "wins_b": wins_b}
    else:
        result |= {"test": "paired_bootstrap", "p": p_boot}
    result["significant"] = bool(result["p"] < alpha)
    return result


def _resampled_ratios(num: np.ndarray, den: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    picks = np.random.default_rng(seed).integers(0, num.size, size=(resamples, num.size))
    return num[picks].sum(1) / np.maximum(den[picks].sum(1), 1e-12)


def bootstrap_ratio(num, den, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of sum(num) / sum(den), resampling whole units (documents): the
    per-token loss of a set of texts, whose documents differ in length and whose tokens within one
    document are not independent."""
    return paired_ratio_difference(num, np.zeros(len(list(num))), den, level, resamples, seed)[1]


def paired_ratio_difference(num_a, num_b, den, level: float = LEVEL, resamples: int = RESAMPLES,
                            seed: int = 0) -> tuple[float, Interval]:
    """(two-sided p, interval) of (sum(num_a) - sum(num_b)) / sum(den), the same units resampled for
    both: is one model's per-token loss on the same texts different from another's?"""
    diff = np.asarray(list(num_a), dtype=float) - np.asarray(list(num_b), dtype=float)
    den = np.asarray(list(den), dtype=float)
    if diff.size == 0 or den.sum() == 0:
        return 1.0, Interval(math.nan, math.nan, math.nan, int(diff.size), level)
    ratios = _resampled_ratios(diff, den, resamples, seed)
    tail = (1.0 - level) / 2
    low, high = np.quantile(ratios, [tail, 1.0 - tail])
    p = 1.0 if np.all(diff == 0) else min(1.0, 2.0 * min(float(np.mean(ratios <= 0)), float(np.mean(ratios >= 0))))
    return p, Interval(float(diff.sum() / den.sum()), float(low), float(high), int(diff.size), level)
