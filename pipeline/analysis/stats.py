"""Statistics over training seeds: mean ± std, differences with Welch intervals and exact
permutation tests, and for binary outcomes (a run left chance or not) Fisher's exact test,
Clopper–Pearson intervals and Holm's adjustment over a family of tests (docs/statistics.md)."""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of one metric over seeds (std 0 for one seed)."""

    mean: float
    std: float
    n: int

    def describe(self) -> str:
        return f"{self.mean:.4f} ± {self.std:.4f} (n={self.n})"


@dataclass(frozen=True)
class Difference:
    """mean(a) − mean(b) with a Welch t confidence interval, and the exact permutation test's
    two-sided p of the same difference. NaN bounds below two seeds a side, or where neither
    side varies (then no interval exists: it is not a zero-width one)."""

    mean: float
    low: float
    high: float
    n: tuple[int, int] = (0, 0)
    permutation_p: float = math.nan
    no_spread: bool = False

    def describe(self) -> str:
        """The difference with its interval, or why it has none."""
        if self.no_spread:
            return f"{self.mean:+.4f} (no interval: no spread, {self.n[0]} vs {self.n[1]} runs)"
        if math.isnan(self.low):
            return f"{self.mean:+.4f} (no interval: needs two or more seeds per variant)"
        return f"{self.mean:+.4f}, {CONFIDENCE:.0%} CI [{self.low:+.4f}, {self.high:+.4f}]"

    def resolved(self) -> bool:
        """Whether the interval excludes 0 (a null result is 'not resolved', never 'none')."""
        return not math.isnan(self.low) and (self.low > 0 or self.high < 0)


def spread(values: list[float]) -> Spread:
    """Mean ± sample std of `values` (both NaN where one is unknown)."""
    if any(math.isnan(value) for value in values):
        return Spread(math.nan, math.nan, len(values))
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Spread(statistics.fmean(values), std, len(values))


def difference(a: list[float], b: list[float]) -> Difference:
    """mean(a) − mean(b) with Welch's t interval, which does not assume equal variances, and
    an exact permutation test, which assumes no distribution: with a few seeds a side, or
    spreads as unequal as a group stuck at chance beside one that learns, Welch's degrees of
    freedom fall near 1-2 and its interval says little that the ranks do not."""
    mean = statistics.fmean(a) - statistics.fmean(b)
    n = (len(a), len(b))
    permutation = permutation_p(a, b)
    if len(a) < 2 or len(b) < 2:
        return Difference(mean, math.nan, math.nan, n, permutation)
    variances = (statistics.variance(a), statistics.variance(b))
    if variances == (0, 0):
        return Difference(mean, math.nan, math.nan, n, permutation, no_spread=True)
    with warnings.catch_warnings():
        if 0 in variances:
            # A group without spread (every seed at chance) has a variance of exactly 0, which
            # scipy warns may be precision lost to cancellation; here it is exact.
            warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        interval = stats.ttest_ind(a, b, equal_var=False).confidence_interval(CONFIDENCE)
    return Difference(mean, float(interval.low), float(interval.high), n, permutation)


def permutation_p(a: list[float], b: list[float]) -> float:
    """Two-sided p of the exact permutation test of mean(a) − mean(b): every relabelling of
    the pooled runs (56 for 3 against 5) is enumerated, so ties and tiny groups are exact."""
    if len(a) < 2 or len(b) < 2:
        return math.nan  # scipy's test needs two runs a side
    if statistics.pvariance([*a, *b]) == 0:
        return 1.0  # every relabelling gives the same difference
    result = stats.permutation_test(
        (a, b),
        lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        permutation_type="independent",
        n_resamples=math.inf,
        alternative="two-sided",
        vectorized=True,
    )
    return float(min(1.0, result.pvalue))


def smallest_permutation_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p the exact permutation test can give with n_a against n_b
    runs: the two most extreme of C(n_a + n_b, n_a) relabellings. 3 against 3: 0.1, so no
    such comparison can reach 0.05, whatever the data."""
    if n_a < 1 or n_b < 1:
        return math.nan
    return min(1.0, 2 / math.comb(n_a + n_b, n_a))


def proportion_interval(successes: int, total: int) -> tuple[float, float]:
    """The exact (Clopper–Pearson) 95% interval of a proportion: always within [0, 1]."""
    if total == 0:
        return math.nan, math.nan
    interval = stats.binomtest(successes, total).proportion_ci(CONFIDENCE, method="exact")
    return float(interval.low), float(interval.high)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p values, in their order (NaN stays NaN).
    Written here because scipy adjusts for the false discovery rate only
    (`false_discovery_control`), not for the family-wise error Holm controls."""
    finite = sorted((p, index) for index, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[index] = running
    return adjusted


def fisher_p(stuck_and_total: tuple[int, int], baseline: tuple[int, int]) -> float:
    """Two-sided p of Fisher's exact test on (stuck, runs) against the baseline's."""
    (stuck, total), (base_stuck, base_total) = stuck_and_total, baseline
    table = [[stuck, total - stuck], [base_stuck, base_total - base_stuck]]
    return float(stats.fisher_exact(table).pvalue)


MOVED_AT_LEAST = 0.01  # a curve whose net change is smaller did not learn: no roughness


def curve_roughness(values: list[float]) -> float:
    """How jagged a learning curve is: how far it falls back per epoch, on average,
    Σ max(0, yᵢ − yᵢ₊₁) / (n − 1), in the curve's own units. 0 for a curve that only climbs.

    Not divided by the curve's net change: a curve that does most of its climbing before
    the first point (BN's, by epoch 1) would otherwise score rougher for the same steps
    back. A run that did not learn (net change below MOVED_AT_LEAST) has no roughness (NaN)
    and is counted apart, so a flat curve at chance cannot win by being flat. NaN below
    three points."""
    if len(values) < 3 or abs(values[-1] - values[0]) < MOVED_AT_LEAST:
        return math.nan
    falls = [max(0.0, a - b) for a, b in zip(values, values[1:], strict=False)]
    return sum(falls) / len(falls)


def finite_spread(values: list[float]) -> Spread:
    """Mean ± std of the finite values alone (n counts them)."""
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return Spread(math.nan, math.nan, 0)
    return spread(finite)
