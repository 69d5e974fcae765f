"""The interval and paired-test code against cases whose answers are known exactly."""

from __future__ import annotations

import math

import pytest

from tunery.eval.stats import bootstrap_ci, compare_paired, mcnemar_exact, paired_bootstrap


def binomial_quantile(n: int, p: float, q: float) -> int:
    """Smallest k with P(X <= k) >= q for X ~ Binomial(n, p), computed exactly."""
    total = 0.0
    for k in range(n + 1):
        total += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if total >= q:
            return k
    return n


def test_bootstrap_of_a_binary_mean_matches_the_exact_binomial_quantiles():
    # Resampling n pass/fail scores with p passing gives mean ~ Binomial(n, p) / n exactly, so the
    # percentile interval must sit at the binomial's 2.5% and 97.5% quantiles: 40% and 60% here.
    values = [1] * 50 + [0] * 50
    ci = bootstrap_ci(values, resamples=20000, seed=1)
    assert (binomial_quantile(100, 0.5, 0.025), binomial_quantile(100, 0.5, 0.975)) == (40, 60)
    assert ci.mean == 0.5 and ci.n == 100
    assert ci.low == pytest.approx(0.40, abs=0.006) and ci.high == pytest.approx(0.60, abs=0.006)
    skewed = bootstrap_ci([1] * 9 + [0], resamples=20000, seed=2)
    # Binomial(10, 0.9): P(X <= 6) = 0.0128, P(X <= 7) = 0.0702 -> the 2.5% quantile is 7; the top is 10.
    assert binomial_quantile(10, 0.9, 0.025) == 7
    assert (skewed.low, skewed.high) == (pytest.approx(0.7), 1.0)


def test_bootstrap_is_seeded_and_handles_degenerate_input():
    values = [0.1, 0.9, 0.4, 0.7, 0.2, 1.0]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)
    assert bootstrap_ci([0.25] * 7).to_json() == {"mean": 0.25, "low": 0.25, "high": 0.25, "n": 7, "level": 0.95}
    small = bootstrap_ci([0, 0, 1], resamples=20000)  # P(all three resampled are the 1) = 1/27 > 2.5%
    assert (small.low, small.high) == (0.0, 1.0)
    empty = bootstrap_ci([])
    assert empty.n == 0 and math.isnan(empty.mean)
    narrow = bootstrap_ci([1] * 50 + [0] * 50, level=0.5, resamples=20000, seed=1)
    assert narrow.high - narrow.low < 0.1


def test_mcnemar_exact_on_hand_computed_cases():
    a = [1] * 10 + [0] * 2 + [1] * 5 + [0] * 3
    b = [0] * 10 + [1] * 2 + [1] * 5 + [0] * 3
    # 12 discordant pairs, 10 for a: p = 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 158 / 4096.
    assert mcnemar_exact(a, b) == (158 / 4096, 10, 2)
    assert mcnemar_exact([1] * 5, [0] * 5) == (2 / 32, 5, 0)  # even 5-0 is not significant at 5%
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == (1.0, 0, 0)
    assert mcnemar_exact([1, 0], [0, 1])[0] == 1.0


def test_paired_bootstrap_and_the_choice_of_test():
    p, diff = paired_bootstrap([0.9, 0.8, 0.7, 0.95], [0.4, 0.3, 0.2, 0.45])
    assert p == 0.0 and (diff.mean, diff.low, diff.high) == (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.5))
    same, _ = paired_bootstrap([0.3, 0.6], [0.3, 0.6])
    assert same == 1.0
    binary = compare_paired([1] * 10 + [0] * 2, [0] * 10 + [1] * 2)
    assert binary["test"] == "mcnemar_exact" and binary["p"] == pytest.approx(158 / 4096) and binary["significant"]
    assert binary["diff"] == pytest.approx(8 / 12) and binary["diff_low"] < binary["diff"] < binary["diff_high"]
    graded = compare_paired([0.5, 0.6, 0.55, 0.52], [0.5, 0.58, 0.56, 0.5])
    assert graded["test"] == "paired_bootstrap" and not graded["significant"]
    with pytest.raises(ValueError, match="equal lengths"):
        compare_paired([1], [1, 0])
