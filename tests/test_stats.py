"""Mean ± std over seeds and Welch's interval of a difference, against textbook numbers."""

from __future__ import annotations

import math
import warnings

import pytest
from scipy import stats

from pipeline.analysis.stats import curve_roughness, difference, spread


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


def test_no_interval_below_two_seeds_and_none_without_spread() -> None:
    assert math.isnan(difference([0.6], [0.5, 0.55]).low)
    flat = difference([0.1, 0.1, 0.1], [0.1] * 5)
    assert flat.mean == pytest.approx(0.0) and math.isnan(flat.low) and math.isnan(flat.high)
    assert flat.no_spread and not flat.resolved()
    assert flat.describe() == "+0.0000 (no interval: no spread, 3 vs 5 runs)"
    assert flat.permutation_p == 1.0


def test_the_permutation_test_is_exact_where_welch_sees_nothing() -> None:
    """Three runs all below five: 2 of the C(8, 3) = 56 relabellings are as extreme."""
    low, high = [0.567, 0.280, 0.505], [0.648, 0.610, 0.620, 0.630, 0.590]
    gap = difference(low, high)
    assert gap.permutation_p == pytest.approx(2 / 56)
    assert gap.low < 0 < gap.high and not gap.resolved()  # Welch, about 2 degrees of freedom
    # A half-way overlap is nowhere near significant.
    assert difference([0.60, 0.64], [0.62, 0.63]).permutation_p == pytest.approx(1.0)


def test_roughness_is_the_path_over_the_net_change_and_flat_runs_have_none() -> None:
    assert curve_roughness([0.1, 0.3, 0.5, 0.6]) == pytest.approx(1.0)  # climbs only
    assert curve_roughness([0.1, 0.5, 0.3, 0.6]) == pytest.approx((0.4 + 0.2 + 0.3) / 0.5)
    assert math.isnan(curve_roughness([0.1, 0.1, 0.1, 0.1]))  # stuck at chance: no score
    assert math.isnan(curve_roughness([0.1, 0.5]))


def test_a_group_stuck_at_chance_beside_one_that_learns_warns_of_nothing() -> None:
    stuck, learned = [0.10000000149011612] * 3, [0.60, 0.62, 0.65]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's precision-loss warning would raise here
        gap = difference(stuck, learned)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        welch = stats.ttest_ind(stuck, learned, equal_var=False).confidence_interval()
    assert (gap.low, gap.high) == pytest.approx((welch.low, welch.high))
