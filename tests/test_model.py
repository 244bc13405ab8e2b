"""The architecture matches the article's model, and the export takes raw images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config.params import NormalizeParams
from pipeline.config.train_params import (
    AugmentationParams,
    SpeedParams,
    TrainParams,
    VariantSettings,
)
from pipeline.normalize import apply_normalization, compute_stats
from pipeline.records.data import NormalizationStats
from pipeline.training.augment import RandomAffine
from pipeline.training.fit import compiled_model
from pipeline.training.model import (
    FusedBatchNormalization,
    build_model,
    export_model,
    with_stock_layers,
)


def article_model(batch_norm: bool) -> keras.Model:
    """The article's Sequential model, as its code writes it (Keras 3 spelling)."""
    L = keras.layers

    def bn() -> list[keras.layers.Layer]:
        return [L.BatchNormalization()] if batch_norm else []

    layers = [
        keras.Input((32, 32, 3)),
        L.Conv2D(32, (3, 3), padding="same", activation="sigmoid"),
        *bn(),
        L.Conv2D(32, (3, 3), padding="same", kernel_initializer="he_uniform", activation="sigmoid"),
        *bn(),
        L.MaxPooling2D((2, 2)),
        L.Conv2D(64, (3, 3), padding="same", kernel_initializer="he_uniform", activation="sigmoid"),
        *bn(),
        L.Conv2D(64, (3, 3), padding="same", kernel_initializer="he_uniform", activation="sigmoid"),
        *bn(),
        L.MaxPooling2D((2, 2)),
        L.Flatten(),
        L.Dense(128, activation="sigmoid", kernel_initializer="he_uniform"),
        L.Dense(10, activation="softmax"),
    ]
    return keras.Sequential(layers)


def weighted_layer_types(model: keras.Model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers if layer.weights]


@pytest.mark.parametrize("batch_norm", [False, True])
def test_same_structure_parameters_and_function_as_the_article(batch_norm: bool) -> None:
    ours = build_model(VariantSettings(batch_norm=batch_norm))
    theirs = article_model(batch_norm)
    assert ours.count_params() == theirs.count_params() == (592042 if batch_norm else 591274)
    assert weighted_layer_types(with_stock_layers(ours)) == weighted_layer_types(theirs)
    # The same weights give the same outputs: the separate Activation layers change nothing.
    ours.set_weights(theirs.get_weights())
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    assert np.allclose(
        ours.predict(images, verbose=0), theirs.predict(images, verbose=0), atol=1e-5
    )


def test_fused_batch_norm_trains_like_keras_batch_norm() -> None:
    rng = np.random.default_rng(3)
    images = tf.constant(rng.normal(2.0, 3.0, size=(8, 5, 5, 4)).astype(np.float32))
    weights = [rng.normal(1, 0.3, 4), rng.normal(0, 0.3, 4), rng.normal(0, 1, 4), rng.random(4)]
    layers = []
    for layer in (keras.layers.BatchNormalization(), FusedBatchNormalization()):
        layer.build(images.shape)
        layer.set_weights([w.astype(np.float32) for w in weights])
        layers.append(layer)
    results = []
    for layer in layers:
        with tf.GradientTape() as tape:
            tape.watch(images)
            outputs = layer(images, training=True)
            loss = tf.reduce_sum(outputs * tf.range(outputs.shape[-1], dtype=tf.float32) ** 2)
        gradients = tape.gradient(loss, [images, layer.gamma, layer.beta])
        statistics = [np.array(layer.moving_mean), np.array(layer.moving_variance)]
        inference = layer(images, training=False)
        results.append([outputs, *gradients, *statistics, inference])
    stock, fused = results
    for expected, actual in zip(stock, fused, strict=True):
        np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-4, atol=1e-4)
    assert not np.allclose(stock[4], weights[2])  # the moving statistics did move


def test_models_train_with_fused_batch_norm_and_export_stock_layers() -> None:
    fused = build_model(VariantSettings(batch_norm=True))
    stock = build_model(VariantSettings(batch_norm=True), speed=SpeedParams(fused_batch_norm=False))
    assert isinstance(fused.get_layer("conv1_bn"), FusedBatchNormalization)
    assert not isinstance(stock.get_layer("conv1_bn"), FusedBatchNormalization)
    stats = NormalizationStats(method="scale", scale=1 / 255)
    exported = export_model(fused, stats)
    inner = [layer for layer in exported.layers if isinstance(layer, keras.Model)]
    assert len(inner) == 1
    assert {type(layer) for layer in inner[0].layers} >= {keras.layers.BatchNormalization}
    assert not any(isinstance(layer, FusedBatchNormalization) for layer in inner[0].layers)


def test_bn_position_before_activation() -> None:
    model = build_model(VariantSettings(batch_norm=True, bn_position="before_activation"))
    names = [layer.name for layer in model.layers]
    assert names.index("conv1_bn") < names.index("conv1_act")
    after = [layer.name for layer in build_model(VariantSettings(batch_norm=True)).layers]
    assert after.index("conv1_act") < after.index("conv1_bn")


def with_trained_statistics(model: keras.Model, rng: np.random.Generator) -> keras.Model:
    """`model` with BatchNormalization scales, offsets and moving statistics far from the
    initial 1, 0, 0, 1, as after training (an export that dropped them would show)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 2.0, size),  # gamma
                    rng.normal(0.0, 0.5, size),  # beta
                    rng.uniform(0.2, 0.8, size),  # moving mean of sigmoid outputs
                    rng.uniform(0.005, 0.05, size),  # moving variance
                ]
            )
    return model


@pytest.mark.parametrize("method", ["standardize", "scale", "article"])
def test_export_on_raw_images_equals_core_on_normalized(method: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    stats = compute_stats(raw, NormalizeParams.model_validate({"method": method}))
    core = build_model(VariantSettings(batch_norm=True))
    initial = core.predict(apply_normalization(raw, stats), verbose=0)
    with_trained_statistics(core, rng)
    export_model(core, stats).save(tmp_path / "model.keras")
    exported = keras.models.load_model(tmp_path / "model.keras")
    expected = core.predict(apply_normalization(raw, stats), verbose=0)
    assert not np.allclose(expected, initial, atol=1e-3)  # the statistics do matter
    assert np.allclose(exported.predict(raw, verbose=0), expected, atol=1e-5)


def test_augmentation_changes_training_batches_only() -> None:
    augment = RandomAffine(AugmentationParams(), seed=0)
    images = np.random.default_rng(2).random((4, 32, 32, 3)).astype(np.float32)
    assert np.allclose(augment(images, training=False), images)
    assert not np.allclose(augment(images, training=True), images)


def test_a_model_trained_with_the_article_optimizer_exports_and_loads_without_project_code(
    tmp_path: Path,
) -> None:
    settings = TrainParams(batch_norm=True, rmsprop_epsilon="outside_sqrt")
    core = compiled_model(settings)  # compiled with RMSpropEpsilonOutside, as training leaves it
    stats = NormalizationStats(method="scale", scale=1 / 255)
    export_model(core, stats).save(tmp_path / "model.keras")
    # A fresh interpreter with Keras only, as the evaluate stage and MLflow users load it.
    check = (
        "import sys, keras, numpy as np; "
        "m = keras.models.load_model(sys.argv[1]); "
        "print(m.predict(np.zeros((2, 32, 32, 3), np.uint8), verbose=0).shape); "
        "assert not any(name.startswith('pipeline') for name in sys.modules)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", check, str(tmp_path / "model.keras")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert "(2, 10)" in loaded.stdout
