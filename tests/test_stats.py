"""Mean ± std over seeds and Welch's interval of a difference, against textbook numbers."""

from __future__ import annotations

import math
import warnings

import pytest
from scipy import stats

from pipeline.analysis.stats import (
    curve_roughness,
    difference,
    holm,
    proportion_interval,
    smallest_permutation_p,
    spread,
)


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


def test_roughness_is_the_fall_back_per_epoch_and_flat_runs_have_none() -> None:
    assert curve_roughness([0.1, 0.3, 0.5, 0.6]) == 0.0  # climbs only
    assert curve_roughness([0.1, 0.5, 0.3, 0.6]) == pytest.approx(0.2 / 3)
    # The same steps back, whatever the climb before them: BN climbs mostly before epoch 1.
    assert curve_roughness([0.50, 0.60, 0.55, 0.65]) == curve_roughness([0.10, 0.60, 0.55, 0.65])
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


def test_three_seeds_against_three_cannot_reach_five_percent() -> None:
    assert smallest_permutation_p(3, 3) == pytest.approx(0.1)
    assert difference([0.5, 0.51, 0.52], [0.1, 0.11, 0.12]).permutation_p == pytest.approx(0.1)
    assert smallest_permutation_p(10, 10) < 0.001


def test_a_share_s_interval_is_clopper_pearsons_and_stays_within_0_and_1() -> None:
    low, high = proportion_interval(3, 3)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 3))
    low, high = proportion_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10))
    assert all(math.isnan(bound) for bound in proportion_interval(0, 0))


def test_holm_multiplies_by_the_tests_left_and_keeps_the_order() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    adjusted = holm([0.02, math.nan])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1])
