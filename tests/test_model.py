"""The architecture matches the article's model, and the export takes raw images."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.model import augmentation_layers, build_model, export_model
from pipeline.normalize import apply_normalization, compute_stats
from pipeline.params import AugmentationParams, ModelSettings, NormalizeParams


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
    ours = build_model(ModelSettings(batch_norm=batch_norm))
    theirs = article_model(batch_norm)
    assert ours.count_params() == theirs.count_params() == (592042 if batch_norm else 591274)
    assert weighted_layer_types(ours) == weighted_layer_types(theirs)
    # The same weights give the same outputs: the separate Activation layers change nothing.
    ours.set_weights(theirs.get_weights())
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    assert np.allclose(
        ours.predict(images, verbose=0), theirs.predict(images, verbose=0), atol=1e-5
    )


def test_bn_position_before_activation() -> None:
    model = build_model(ModelSettings(batch_norm=True, bn_position="before_activation"))
    names = [layer.name for layer in model.layers]
    assert names.index("conv1_bn") < names.index("conv1_act")
    after = [layer.name for layer in build_model(ModelSettings(batch_norm=True)).layers]
    assert after.index("conv1_act") < after.index("conv1_bn")


@pytest.mark.parametrize("method", ["standardize", "scale", "article"])
def test_export_on_raw_images_equals_core_on_normalized(method: str) -> None:
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    stats = compute_stats(raw, NormalizeParams.model_validate({"method": method}))
    core = build_model(ModelSettings(batch_norm=True))
    exported = export_model(core, stats)
    expected = core.predict(apply_normalization(raw, stats), verbose=0)
    assert np.allclose(exported.predict(raw, verbose=0), expected, atol=1e-5)


def test_augmentation_changes_training_batches_only() -> None:
    augment = augmentation_layers(AugmentationParams(), seed=0)
    images = np.random.default_rng(2).random((4, 32, 32, 3)).astype(np.float32)
    assert np.allclose(augment(images, training=False), images)
    assert not np.allclose(augment(images, training=True), images)
    assert (
        augmentation_layers(AugmentationParams(shear=0, zoom=0, horizontal_flip=False), 0).layers
        == []
    )
