"""Confidence intervals of eval's accuracies (evaluation/report.py prints and plots them).

A benchmark scored right or wrong per unit (MMStar, MMBench, POPE, GQA) gets the Wilson score interval: E. B. Wilson,
"Probable inference, the law of succession, and statistical inference", JASA 22:209-212 (1927). Brown, Cai & DasGupta,
"Interval estimation for a binomial proportion", Statistical Science 16:101-133 (2001), recommend it over the normal
(Wald) interval, which collapses to zero width at 0 of n and n of n and undercovers for small n. Fractional scores
(TextVQA's VQA accuracy: min(matches / 3, 1) per question) get the normal interval of the mean, clipped to [0, 1].
"""

from __future__ import annotations

import math

Z95 = 1.959964  # the two-sided 95 % quantile of the standard normal


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (low, high) of a proportion: `successes` of `n`, at the normal quantile `z`.

    (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n) with p = successes / n; always within [0, 1].
    ValueError for n < 1, successes outside [0, n], or z not positive.
    """
    if n < 1:
        raise ValueError(f"wilson_interval needs n >= 1 trials, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: successes must be within [0, {n}], got {successes}")
    if not z > 0:
        raise ValueError(f"wilson_interval: z must be positive, got {z}")
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(max(p * (1 - p) / n + z2 / (4 * n * n), 0.0))
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the edges, where rounding leaves ~1e-19
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mean_interval(scores: list[float], z: float = Z95) -> tuple[float, float, float]:
    """(mean, low, high) of per-unit scores in [0, 1].

    Every score 0 or 1: the Wilson interval of their sum. Otherwise (fractional scores) the normal interval of the mean,
    mean ± z·s/sqrt(n) with the sample standard deviation s (n - 1), clipped to [0, 1]; equal scores (s = 0, where
    that interval is a point): the Wilson interval of their sum, the widest a [0, 1] score of that mean can need; one
    fractional score says nothing of its spread: (score, 0, 1). ValueError for no scores, or a score that is not finite or outside [0, 1].
    """
    values = [float(s) for s in scores]
    if not values:
        raise ValueError("mean_interval needs at least one score")
    bad = [s for s in values if not (math.isfinite(s) and 0.0 <= s <= 1.0)]
    if bad:
        raise ValueError(f"mean_interval: scores must be finite and within [0, 1], got {bad[0]!r}")
    n = len(values)
    mean = math.fsum(values) / n
    if all(s in (0.0, 1.0) for s in values):
        low, high = wilson_interval(math.fsum(values), n, z)
        return mean, low, high
    if n == 1:
        return mean, 0.0, 1.0
    sd = math.sqrt(math.fsum((s - mean) ** 2 for s in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    if sd == 0.0:  # equal scores: the normal interval collapses to a point; Bernoulli's spread bounds theirs
        low, high = wilson_interval(math.fsum(values), n, z)
        return mean, low, high
    return mean, max(0.0, mean - half), min(1.0, mean + half)
