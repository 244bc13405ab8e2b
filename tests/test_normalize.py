"""The normalize stage: stratified seeded split and normalization from training statistics."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.config.params import NormalizeParams
from pipeline.normalize import apply_normalization, compute_stats, prepare, stratified_split


def raw_dataset(per_class: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    """Random uint8 images whose test split is deliberately brighter than train."""
    rng = np.random.default_rng(seed)
    n = per_class * 10
    return {
        "x_train": rng.integers(0, 200, size=(n, 32, 32, 3), dtype=np.uint8),
        "y_train": np.repeat(np.arange(10, dtype=np.uint8), per_class),
        "x_test": rng.integers(100, 256, size=(n // 4, 32, 32, 3), dtype=np.uint8),
        "y_test": np.repeat(np.arange(10, dtype=np.uint8), per_class // 4),
        "class_names": np.array([f"c{i}" for i in range(10)]),
    }


def test_split_is_stratified_disjoint_and_seeded() -> None:
    labels = np.repeat(np.arange(10), 50)
    keep, held_out = stratified_split(labels, 0.2, seed=3)
    assert set(keep).isdisjoint(held_out)
    assert len(keep) + len(held_out) == len(labels)
    assert np.bincount(labels[held_out]).tolist() == [10] * 10
    again_keep, again_held = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(held_out, again_held) and np.array_equal(keep, again_keep)
    _, other = stratified_split(labels, 0.2, seed=4)
    assert not np.array_equal(held_out, other)


def test_standardize_uses_training_split_only() -> None:
    arrays, report = prepare(raw_dataset(), NormalizeParams(method="standardize"), 0.1, seed=0)
    moments = report.normalized_moments
    assert np.allclose(moments["train"]["mean"], 0, atol=1e-3)
    assert np.allclose(moments["train"]["std"], 1, atol=1e-3)
    # Test images are brighter by construction: had their statistics leaked in, they'd be ~0.
    assert min(moments["test"]["mean"]) > 0.5
    assert moments["val"]["mean"] != moments["train"]["mean"]
    assert arrays["x_train"].dtype == np.float32
    assert report.counts == {"train": 360, "val": 40, "test": 100}
    assert np.bincount(arrays["y_val"]).tolist() == [4] * 10


def test_stats_equal_numpy_on_the_training_split() -> None:
    raw = raw_dataset()
    keep, _ = stratified_split(raw["y_train"], 0.1, seed=0)
    stats = compute_stats(raw["x_train"][keep], NormalizeParams(method="standardize"))
    expected = raw["x_train"][keep].reshape(-1, 3).astype(np.float64)
    assert stats.mean is not None and stats.std is not None
    assert np.allclose(stats.mean, expected.mean(axis=0))
    assert np.allclose(stats.std, expected.std(axis=0))


def test_scale_divides_by_255() -> None:
    x = np.array([[[[0, 51, 255]]]], dtype=np.uint8)
    stats = compute_stats(x, NormalizeParams(method="scale"))
    assert np.allclose(apply_normalization(x, stats), [[[[0, 0.2, 1]]]])


@pytest.mark.parametrize("seed", [0, 1])
def test_article_method_equals_keras_normalize_axis_1(seed: int) -> None:
    x = raw_dataset(per_class=2, seed=seed)["x_train"]
    x[0, :, 5, 1] = 0  # a zero column: keras leaves it at zero
    stats = compute_stats(x, NormalizeParams(method="article"))
    ours = apply_normalization(x, stats)
    theirs = keras.utils.normalize(x.astype(np.float32), axis=1)
    assert np.allclose(ours, np.asarray(theirs), atol=1e-6)
    assert np.allclose(np.linalg.norm(ours[1], axis=0), 1, atol=1e-5)


def test_a_zero_val_fraction_keeps_every_training_image() -> None:
    raw = raw_dataset()
    arrays, report = prepare(raw, NormalizeParams(method="standardize"), 0.0, seed=0)
    assert len(arrays["y_train"]) == len(raw["y_train"]) and len(arrays["y_val"]) == 0
    assert report.counts["val"] == 0 and "val" not in report.normalized_moments
    assert np.allclose(report.normalized_moments["train"]["mean"], 0, atol=1e-4)
