"""The article's CNN, built from a variant's settings, and its raw-image export wrapper."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline.cifar10.chance import NUM_CLASSES
from pipeline.config.train_params import SpeedParams, VariantSettings
from pipeline.records.data import NormalizationStats

IMAGE_SHAPE = (32, 32, 3)

# (filters, kernel initializer) of the four conv layers; the article leaves the first
# layer on Keras' default initializer and gives the others he_uniform.
CONV_LAYERS = (
    (32, "glorot_uniform"),
    (32, "he_uniform"),
    (64, "he_uniform"),
    (64, "he_uniform"),
)


class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization with its training pass as TensorFlow's single fused kernel.

    Keras 3 normalizes a training batch with a chain of separate reductions and elementwise
    ops, forward and backward; FusedBatchNormV3 (oneDNN on x86) does each pass in one op,
    which makes the bn variant's training step about 30% faster on a CPU
    (docs/speed.md). Same function, variables and moving-average update; inference runs
    Keras' own code. tests/test_model.py checks outputs, gradients and statistics against
    the stock layer.
    """

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        if not (training and self.trainable) or mask is not None or len(inputs.shape) != 4:
            return super().call(inputs, training=training, mask=mask)
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs,
            scale=self.gamma,
            offset=self.beta,
            mean=tf.constant([], tf.float32),
            variance=tf.constant([], tf.float32),
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=True,
        )
        # The kernel returns the variance with Bessel's correction; Keras averages the biased one.
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
        variance = variance * (count - 1.0) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
        )
        return tf.cast(outputs, self.compute_dtype)


def build_model(
    settings: VariantSettings, num_classes: int = NUM_CLASSES, speed: SpeedParams | None = None
) -> keras.Model:
    """The article's architecture on normalized images; BN per `settings.batch_norm`.

    Activations are separate layers named `<layer>_act` so that pre-activations can be
    inspected; the function is the same as the article's `Conv2D(activation=...)`.
    `speed.precision` sets the dtype policy of the convolutions, pooling and dense layers
    (per layer, not Keras' global policy, so that models built later in the same process are
    unaffected); with `speed.float32_nonlinearities` the activations and BatchNormalization
    stay float32. `speed.fused_batch_norm` picks FusedBatchNormalization over Keras' layer.
    """
    speed = speed or SpeedParams()
    dtype = speed.precision
    nonlinear_dtype = "float32" if speed.float32_nonlinearities else dtype
    norm_layer = (
        FusedBatchNormalization if speed.fused_batch_norm else keras.layers.BatchNormalization
    )
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = inputs
    for index, (filters, initializer) in enumerate(CONV_LAYERS, start=1):
        name = f"conv{index}"
        x = keras.layers.Conv2D(
            filters, 3, padding="same", kernel_initializer=initializer, name=name, dtype=dtype
        )(x)
        x = _activation_block(x, settings, name, nonlinear_dtype, norm_layer)
        if index % 2 == 0:
            x = keras.layers.MaxPooling2D(2, name=f"pool{index // 2}", dtype=dtype)(x)
    x = keras.layers.Flatten(name="flatten", dtype=dtype)(x)
    x = keras.layers.Dense(128, kernel_initializer="he_uniform", name="dense", dtype=dtype)(x)
    x = keras.layers.Activation(settings.activation, name="dense_act", dtype=nonlinear_dtype)(x)
    # float32 softmax keeps the loss stable when the rest runs in mixed precision.
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="classifier"
    )(x)
    return keras.Model(inputs, outputs, name="bn_cnn" if settings.batch_norm else "plain_cnn")


def _activation_block(
    x: Any, settings: VariantSettings, name: str, dtype: str, norm_layer: type[keras.layers.Layer]
) -> Any:
    """Activation, with batch normalization before or after it when the variant asks."""
    activation = keras.layers.Activation(settings.activation, name=f"{name}_act", dtype=dtype)
    if not settings.batch_norm:
        return activation(x)
    norm = norm_layer(momentum=settings.bn_momentum, name=f"{name}_bn", dtype=dtype)
    if settings.bn_position == "before_activation":
        return activation(norm(x))
    return norm(activation(x))


def input_normalization_layer(stats: NormalizationStats) -> keras.layers.Layer:
    """The normalize stage's transform as a built-in Keras layer on raw 0-255 pixels."""
    if stats.method == "standardize":
        return keras.layers.Normalization(
            axis=-1,
            mean=np.asarray(stats.mean),
            variance=np.square(np.asarray(stats.std)),
            name="normalize",
        )
    if stats.method == "scale":
        return keras.layers.Rescaling(stats.scale, name="normalize")
    return keras.layers.UnitNormalization(axis=stats.axis, name="normalize")


def with_stock_layers(model: keras.Model) -> keras.Model:
    """A copy of `model` with Keras' own BatchNormalization in place of the fused one, so
    that the saved model loads wherever Keras does, without this project's code."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, FusedBatchNormalization):
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    # Cloned through an uncompiled view of the same layers: cloning a compiled model also
    # copies its compile state, and the saved export would then need the training optimizer.
    uncompiled = keras.Model(model.inputs, model.outputs, name=model.name)
    copy = keras.models.clone_model(uncompiled, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def export_model(core: keras.Model, stats: NormalizationStats) -> keras.Model:
    """Wrap a trained model so that it takes raw uint8 (0-255) images (stock layers only)."""
    raw = keras.Input(IMAGE_SHAPE, name="raw_image")
    pixels = keras.layers.Rescaling(1.0, name="to_float")(raw)  # casts uint8 input to float
    outputs = with_stock_layers(core)(input_normalization_layer(stats)(pixels))
    return keras.Model(raw, outputs, name=f"{core.name}_raw_input")
