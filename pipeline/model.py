"""The article's CNN, built from a variant's settings, and its raw-image export wrapper."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from pipeline.params import AugmentationParams, ModelSettings

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10

# (filters, kernel initializer) of the four conv layers; the article leaves the first
# layer on Keras' default initializer and gives the others he_uniform.
CONV_LAYERS = (
    (32, "glorot_uniform"),
    (32, "he_uniform"),
    (64, "he_uniform"),
    (64, "he_uniform"),
)


def build_model(
    settings: ModelSettings, num_classes: int = NUM_CLASSES, mixed_precision: bool = False
) -> keras.Model:
    """The article's architecture on normalized images; BN per `settings.batch_norm`.

    Activations are separate layers named `<layer>_act` so that pre-activations can be
    inspected; the function is the same as the article's `Conv2D(activation=...)`.
    `mixed_precision` computes in bfloat16 with float32 weights (per layer, not Keras'
    global policy, so that models built later in the same process are unaffected).
    """
    dtype = "mixed_bfloat16" if mixed_precision else "float32"
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = inputs
    for index, (filters, initializer) in enumerate(CONV_LAYERS, start=1):
        name = f"conv{index}"
        x = keras.layers.Conv2D(
            filters, 3, padding="same", kernel_initializer=initializer, name=name, dtype=dtype
        )(x)
        x = _activation_block(x, settings, name, dtype)
        if index % 2 == 0:
            x = keras.layers.MaxPooling2D(2, name=f"pool{index // 2}", dtype=dtype)(x)
    x = keras.layers.Flatten(name="flatten", dtype=dtype)(x)
    x = keras.layers.Dense(128, kernel_initializer="he_uniform", name="dense", dtype=dtype)(x)
    x = keras.layers.Activation(settings.activation, name="dense_act", dtype=dtype)(x)
    # float32 softmax keeps the loss stable when the rest runs in mixed precision.
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="classifier"
    )(x)
    return keras.Model(inputs, outputs, name="bn_cnn" if settings.batch_norm else "plain_cnn")


def _activation_block(x: Any, settings: ModelSettings, name: str, dtype: str) -> Any:
    """Activation, with BatchNormalization before or after it when the variant asks."""
    activation = keras.layers.Activation(settings.activation, name=f"{name}_act", dtype=dtype)
    if not settings.batch_norm:
        return activation(x)
    norm = keras.layers.BatchNormalization(name=f"{name}_bn", dtype=dtype)
    if settings.bn_position == "before_activation":
        return activation(norm(x))
    return norm(activation(x))


def augmentation_layers(params: AugmentationParams, seed: int) -> keras.Sequential:
    """Random shear, zoom and flip as Keras preprocessing layers (training batches only)."""
    layers: list[keras.layers.Layer] = []
    if params.shear > 0:
        layers.append(keras.layers.RandomShear(params.shear, params.shear, seed=seed))
    if params.zoom > 0:
        layers.append(keras.layers.RandomZoom((-params.zoom, params.zoom), seed=seed + 1))
    if params.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 2))
    return keras.Sequential(layers, name="augmentation")


def input_normalization_layer(stats: dict[str, Any]) -> keras.layers.Layer:
    """The normalize stage's transform as a built-in Keras layer on raw 0-255 pixels."""
    method = stats["method"]
    if method == "standardize":
        return keras.layers.Normalization(
            axis=-1,
            mean=np.asarray(stats["mean"]),
            variance=np.square(np.asarray(stats["std"])),
            name="normalize",
        )
    if method == "scale":
        return keras.layers.Rescaling(stats["scale"], name="normalize")
    if method == "article":
        return keras.layers.UnitNormalization(axis=stats["axis"], name="normalize")
    raise ValueError(f"unknown normalization method {method!r}")


def export_model(core: keras.Model, stats: dict[str, Any]) -> keras.Model:
    """Wrap a trained model so that it takes raw uint8 (0-255) images."""
    raw = keras.Input(IMAGE_SHAPE, name="raw_image")
    pixels = keras.layers.Rescaling(1.0, name="to_float")(raw)  # casts uint8 input to float
    outputs = core(input_normalization_layer(stats)(pixels))
    return keras.Model(raw, outputs, name=f"{core.name}_raw_input")
