"""Per-layer probes: their numbers, their files, and the vanishing-gradient property itself."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from pipeline.config.train_params import TrainParams
from pipeline.evidence.probes import PREACTIVATION_FIELDS, LayerProbe, ProbeCallback, fixed_batch
from pipeline.records.layers import (
    read_preactivations,
    read_probes,
    write_preactivations,
    write_probes,
)
from pipeline.training.fit import train_model
from pipeline.training.model import build_model
from tests.conftest import tiny_signal_data as tiny_data
from tests.conftest import tiny_train_settings as settings

CNN_LAYERS = ["conv1", "conv2", "conv3", "conv4", "dense", "classifier"]


def probed_training(epochs: int, interval: int, **changes: object) -> tuple[ProbeCallback, list]:
    data = tiny_data()
    x, y = fixed_batch(data.x_train, data.y_train, images=16, seed=0)
    probe = ProbeCallback(x, y, interval)
    result = train_model(data, settings(epochs=epochs, **changes), seed=3, callbacks=[probe])
    return probe, result.history


@pytest.mark.parametrize("batch_norm", [False, True])
def test_probes_are_finite_and_shaped_per_layer_and_epoch(batch_norm: bool, tmp_path) -> None:
    probe, _ = probed_training(epochs=2, interval=1, batch_norm=batch_norm)
    assert [(row["epoch"], row["layer"]) for row in probe.rows] == [
        (epoch, layer) for epoch in (1, 2) for layer in CNN_LAYERS
    ]
    for row in probe.rows:
        assert row["grad_norm"] > 0 and math.isfinite(row["grad_norm"])
        assert row["update_ratio"] > 0 and math.isfinite(row["update_ratio"])
        has_sigmoid = row["layer"] != "classifier"  # its softmax is inside the Dense layer
        for field in PREACTIVATION_FIELDS:
            assert math.isfinite(row[field]) == has_sigmoid, (row["layer"], field)
        if has_sigmoid:
            assert 0 <= row["saturated_fraction"] <= 1
            assert 0 < row["mean_derivative"] <= 0.25  # sigmoid' peaks at 0.25
    units = {"conv1": 32 * 32 * 32, "conv2": 32 * 32 * 32, "conv3": 16 * 16 * 64}
    units |= {"conv4": 16 * 16 * 64, "dense": 128}
    for epoch in (1, 2):
        counts = probe.histograms[epoch]
        assert {layer: sum(counts[layer]) for layer in counts} == {
            layer: 16 * size for layer, size in units.items()
        }

    write_probes(tmp_path / "probes.csv", probe.rows)
    write_preactivations(tmp_path / "preactivations.json", probe.histograms)
    read_back = read_probes(tmp_path / "probes.csv")
    assert [row["grad_norm"] for row in read_back] == [row["grad_norm"] for row in probe.rows]
    edges, histograms = read_preactivations(tmp_path / "preactivations.json")
    assert len(edges) == len(histograms[1]["conv1"]) + 1
    assert histograms == probe.histograms


def test_probing_leaves_training_unchanged() -> None:
    _, probed = probed_training(epochs=2, interval=1, batch_norm=True)
    unprobed = train_model(tiny_data(), settings(epochs=2, batch_norm=True), seed=3).history
    for with_probe, without in zip(probed, unprobed, strict=True):
        assert with_probe["loss"] == without["loss"]
        assert with_probe["val_loss"] == without["val_loss"]


def test_interval_picks_the_epochs_and_zero_switches_probes_off() -> None:
    every_second, _ = probed_training(epochs=3, interval=2)
    assert sorted({row["epoch"] for row in every_second.rows}) == [2, 3]  # and the last
    off, _ = probed_training(epochs=2, interval=0)
    assert off.rows == [] and off.histograms == {}


def deep_sigmoid_net(batch_norm: bool, seed: int, depth: int = 10, width: int = 64) -> keras.Model:
    """A plain stack of sigmoid Dense layers, optionally with BN before each activation."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32,))
    x = inputs
    for index in range(1, depth + 1):
        x = keras.layers.Dense(width, name=f"dense{index}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"dense{index}_bn")(x)
        x = keras.layers.Activation("sigmoid", name=f"dense{index}_act")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradients_vanish_towards_the_input_without_bn_and_not_with_it(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, 32)).astype(np.float32)
    y = rng.integers(0, 10, size=256)

    def first_to_last_hidden(batch_norm: bool) -> float:
        norms = [
            row["grad_norm"]
            for row in LayerProbe(deep_sigmoid_net(batch_norm, seed), x, y).sample(0).rows
        ]
        return norms[0] / norms[-2]  # dense1 against dense10 (the classifier is last)

    # Ten sigmoid layers shrink the gradient by about 0.25 each (observed: ~1e-6); BN keeps
    # every layer's gradient within a small factor of the others (observed: 0.86-1.0).
    assert first_to_last_hidden(batch_norm=False) < 1e-3
    assert first_to_last_hidden(batch_norm=True) > 0.1


def test_the_cnn_probe_restores_batch_norm_statistics() -> None:
    model = build_model(TrainParams(batch_norm=True))
    before = [variable.numpy().copy() for variable in model.non_trainable_variables]
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(8, 32, 32, 3)).astype(np.float32)
    LayerProbe(model, x, np.arange(8) % 10).sample(1)
    for variable, value in zip(model.non_trainable_variables, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)
