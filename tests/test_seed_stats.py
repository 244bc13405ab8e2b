"""Mean ± std over seeds and Welch's interval of a difference, against textbook numbers."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from pipeline.seed_stats import difference, spread


def test_spread_is_the_mean_and_sample_std() -> None:
    result = spread([0.5, 0.6, 0.7])
    assert (result.mean, result.std, result.n) == pytest.approx((0.6, 0.1, 3))
    assert spread([0.4]).std == 0.0


def test_difference_is_welchs_interval() -> None:
    a, b = [0.66, 0.67, 0.65, 0.68], [0.59, 0.61, 0.60]
    # Welch by hand: standard error, Welch-Satterthwaite degrees of freedom, t quantile.
    va, vb = 0.0001666667 / 4, 0.0001 / 3
    error = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    half = stats.t.ppf(0.975, dof) * error
    gap = difference(a, b)
    assert gap.mean == pytest.approx(0.665 - 0.60)
    assert (gap.low, gap.high) == pytest.approx((0.065 - half, 0.065 + half), rel=1e-4)


def test_no_interval_below_two_seeds_and_a_point_without_spread() -> None:
    assert math.isnan(difference([0.6], [0.5, 0.55]).low)
    flat = difference([0.1, 0.1], [0.1, 0.1])
    assert (flat.mean, flat.low, flat.high) == (0.0, 0.0, 0.0)
