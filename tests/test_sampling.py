"""The one stratified sampler behind fetch's subset, normalize's split and tuning's subset."""

from __future__ import annotations

import numpy as np

from pipeline.cifar10.sampling import class_quotas, stratified_sample


def test_quotas_are_proportional_exact_and_capped() -> None:
    assert class_quotas(np.array([10] * 10), 25).tolist() == [3] * 5 + [2] * 5
    assert class_quotas(np.array([1, 5, 5]), 9).tolist() == [1, 4, 4]
    assert class_quotas(np.array([100] * 5 + [50] * 5), 300).tolist() == [40] * 5 + [20] * 5
    assert class_quotas(np.array([2, 9, 9]), 100).tolist() == [2, 9, 9]
    assert class_quotas(np.array([4, 4]), 0).tolist() == [0, 0]


def test_quotas_stay_within_one_image_of_the_exact_share() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.integers(1, 50, size=rng.integers(2, 12))
        size = int(rng.integers(0, counts.sum() + 5))
        quotas = class_quotas(counts, size)
        assert quotas.sum() == min(size, counts.sum())
        assert np.all(quotas <= counts)
        exact = counts * min(size, counts.sum()) / counts.sum()
        assert np.all(np.abs(quotas - exact) < 1)


def test_sample_is_seeded_sorted_distinct_and_stratified() -> None:
    labels = np.repeat(np.arange(10), [100] * 5 + [50] * 5)
    chosen = stratified_sample(labels, 300, np.random.default_rng(1))
    assert len(chosen) == 300 and np.all(np.diff(chosen) > 0)
    assert np.bincount(labels[chosen], minlength=10).tolist() == [40] * 5 + [20] * 5
    again = stratified_sample(labels, 300, np.random.default_rng(1))
    other = stratified_sample(labels, 300, np.random.default_rng(2))
    assert np.array_equal(chosen, again) and not np.array_equal(chosen, other)


def test_a_sample_larger_than_the_labels_takes_them_all() -> None:
    labels = np.tile(np.arange(3), 4)
    assert np.array_equal(stratified_sample(labels, 50, np.random.default_rng(0)), np.arange(12))
    assert len(stratified_sample(labels, 0, np.random.default_rng(0))) == 0
