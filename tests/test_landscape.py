"""The loss-landscape probe: it measures along the optimizer's steps or the gradient, and changes
nothing."""

from __future__ import annotations

import math

import numpy as np

from pipeline.evidence.landscape import landscape_callback
from pipeline.training.fit import train_model
from tests.conftest import small_train
from tests.conftest import tiny_signal_data as tiny_data


def settings(batch_norm: bool, every_steps: int) -> object:
    landscape = {"every_steps": every_steps, "until_step": 4, "step_multiples": [0.5, 1.0, 2.0]}
    return small_train(
        batch_size=16, epochs=2, batch_norm=batch_norm, probe={"landscape": landscape}
    )


def test_training_is_bit_identical_with_the_landscape_probe_on() -> None:
    data = tiny_data()
    for batch_norm in (False, True):
        plain = train_model(data, settings(batch_norm, 0), seed=3)  # type: ignore[arg-type]
        probed_settings = settings(batch_norm, 2)
        probe = landscape_callback(data, probed_settings, seed=0)  # type: ignore[arg-type]
        probed = train_model(data, probed_settings, seed=3, landscape=probe)  # type: ignore[arg-type]
        assert [row["loss"] for row in probed.history] == [row["loss"] for row in plain.history]
        for mine, theirs in zip(probed.model.get_weights(), plain.model.get_weights(), strict=True):
            assert np.array_equal(mine, theirs)
        # Steps 0, 2, 4 (until_step), then once after the last of 8 steps.
        assert [row["step"] for row in probe.rows] == [0, 2, 4, 8]
        assert probe.seconds > 0


def test_the_measures_are_finite_and_consistent() -> None:
    data = tiny_data()
    probed_settings = settings(True, 4)
    probe = landscape_callback(data, probed_settings, seed=0)  # type: ignore[arg-type]
    train_model(data, probed_settings, seed=1, landscape=probe)  # type: ignore[arg-type]
    for row in probe.rows:
        assert all(math.isfinite(row[key]) for key in row), row
        assert row["loss_variation"] >= 0 and row["gradient_change"] > 0
        assert row["beta_smoothness"] > 0 and row["gradient_norm"] > 0


def test_along_the_gradient_the_distance_moved_is_the_step_times_the_gradient_norm() -> None:
    """direction: gradient steps to w - s·∇L, as Santurkar et al.: β-smoothness is then the
    gradient change over s·‖∇L‖ exactly; along RMSprop's update it is not."""
    data = tiny_data()
    ratios = {}
    for direction in ("gradient", "optimizer_update"):
        landscape = {"every_steps": 4, "direction": direction, "step_sizes": [0.05]}
        probed_settings = small_train(batch_size=16, epochs=1, probe={"landscape": landscape})
        probe = landscape_callback(data, probed_settings, seed=0)  # type: ignore[arg-type]
        train_model(data, probed_settings, seed=1, landscape=probe)  # type: ignore[arg-type]
        ratios[direction] = [
            row["beta_smoothness"] * 0.05 * row["gradient_norm"] / row["gradient_change"]
            for row in probe.rows
        ]
        assert all(row["non_finite"] == 0 for row in probe.rows)
    assert np.allclose(ratios["gradient"], 1.0, rtol=1e-4)
    assert not np.allclose(ratios["optimizer_update"], 1.0, rtol=1e-2)
