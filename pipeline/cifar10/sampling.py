"""The one stratified sampler: fetch's subset, normalize's validation split, tuning's subset."""

from __future__ import annotations

import numpy as np


def class_quotas(counts: np.ndarray, size: int) -> np.ndarray:
    """Images to take per class: `size` shared in proportion to the class counts.

    Largest remainders round the shares, so the quotas sum to exactly `size` (at most the
    total) and each differs from its exact share by less than one image.
    """
    counts = np.asarray(counts, dtype=np.int64)
    size = min(int(size), int(counts.sum()))
    exact = counts * size / max(int(counts.sum()), 1)
    quotas = np.floor(exact).astype(np.int64)
    shortfall = size - int(quotas.sum())
    by_remainder = np.argsort(-(exact - quotas), kind="stable")
    quotas[by_remainder[:shortfall]] += 1
    return quotas


def stratified_sample(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `size` labels (all of them if fewer), each class in proportion to
    its share, drawn without replacement with `rng`."""
    classes, counts = np.unique(labels, return_counts=True)
    chosen = [
        rng.choice(np.flatnonzero(labels == label), size=quota, replace=False)
        for label, quota in zip(classes, class_quotas(counts, size), strict=True)
    ]
    return np.sort(np.concatenate([np.empty(0, dtype=np.int64), *chosen]))
