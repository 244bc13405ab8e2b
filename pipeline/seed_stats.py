"""Across training seeds: mean ± std per variant, and a variant's difference to a baseline."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

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
    """mean(a) − mean(b) with a Welch t confidence interval (NaN bounds below two seeds each)."""

    mean: float
    low: float
    high: float

    def describe(self) -> str:
        if math.isnan(self.low):
            return f"{self.mean:+.4f} (no interval: needs two or more seeds per variant)"
        return f"{self.mean:+.4f}, {CONFIDENCE:.0%} CI [{self.low:+.4f}, {self.high:+.4f}]"


def spread(values: list[float]) -> Spread:
    """Mean ± sample std of `values`."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Spread(statistics.fmean(values), std, len(values))


def difference(a: list[float], b: list[float]) -> Difference:
    """mean(a) − mean(b) with Welch's t interval, which does not assume equal variances."""
    mean = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Difference(mean, math.nan, math.nan)
    if statistics.variance(a) == statistics.variance(b) == 0:
        return Difference(mean, mean, mean)  # no spread at all: scipy's interval is NaN
    interval = stats.ttest_ind(a, b, equal_var=False).confidence_interval(CONFIDENCE)
    return Difference(mean, float(interval.low), float(interval.high))
