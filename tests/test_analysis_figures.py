"""Figures over several seeds draw each variant's mean and the range of its seeds."""

from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D

from pipeline.analysis.figures import (
    curves_figure,
    layer_profile_figure,
    preactivation_figure,
    seed_band,
)


def test_seed_band_is_the_mean_and_the_range_over_seeds() -> None:
    centre, low, high = seed_band([[1.0, 10.0], [100.0, 1000.0]], geometric=True)
    np.testing.assert_allclose(centre, [10.0, 100.0])
    np.testing.assert_allclose(low, [1.0, 10.0])
    np.testing.assert_allclose(high, [100.0, 1000.0])
    centre, _, _ = seed_band([[1.0, 10.0], [100.0, 1000.0]])
    np.testing.assert_allclose(centre, [50.5, 505.0])


def assert_drawn(line: Line2D, expected: list[float]) -> None:
    drawn = np.asarray(line.get_ydata(), dtype=float)
    np.testing.assert_allclose(drawn, np.asarray(expected))


def probe_rows(scale: float) -> list[dict[str, object]]:
    return [
        {"epoch": epoch, "depth": depth, "layer": f"layer{depth}", "grad_norm": scale * depth}
        for epoch in (1, 2)
        for depth in (1, 2)
    ]


def test_layer_profile_draws_the_geometric_mean_of_the_seeds() -> None:
    figure = layer_profile_figure(
        {"plain": [probe_rows(1.0), probe_rows(100.0)], "bn": [probe_rows(5.0)]},
        "grad_norm",
        "gradients",
        log_scale=True,
    )
    lines = {line.get_label(): line for line in figure.axes[0].lines}
    assert set(lines) == {
        "plain, epoch 1, 2 seeds",
        "plain, epoch 2, 2 seeds",
        "bn, epoch 1",
        "bn, epoch 2",
    }
    assert_drawn(lines["plain, epoch 2, 2 seeds"], [10.0, 20.0])
    assert_drawn(lines["bn, epoch 2"], [5.0, 10.0])


def test_curves_and_histograms_average_the_seeds() -> None:
    def history(accuracy: float) -> list[dict[str, float]]:
        return [
            {"epoch": epoch, "accuracy": accuracy * epoch, "val_accuracy": accuracy}
            for epoch in (1, 2)
        ]

    figure = curves_figure({"plain": [history(0.1), history(0.3)]}, "accuracy", "accuracy")
    lines = {line.get_label(): line for line in figure.axes[0].lines}
    assert_drawn(lines["plain train (2 seeds)"], [0.2, 0.4])
    assert_drawn(lines["plain validation (2 seeds)"], [0.2, 0.2])

    edges = np.array([-1.0, 0.0, 1.0])
    runs = [{1: {"conv1": [3, 1]}}, {1: {"conv1": [1, 3]}}]
    figure = preactivation_figure(edges, {"plain": runs})
    assert_drawn(figure.axes[0].lines[0], [0.5, 0.5])
