"""Optimizers by name, with RMSprop's epsilon where the article's Keras put it."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from pipeline.config.train_params import TrainParams

# RMSprop divides each gradient by a running root mean square. Where its epsilon goes decides
# the step of a weight whose gradients are tiny: Keras 3 (and tf.keras from 2.4) compute
# sqrt(v + eps), which puts a floor of sqrt(1e-7) ≈ 3.2e-4 under the denominator; Keras up
# to 2.3, which the article's code ran on, computed sqrt(v) + eps and takes nearly full
# steps even when the gradients are 1e-6.


class RMSpropEpsilonOutside(keras.optimizers.RMSprop):
    """RMSprop with Keras ≤ 2.3's update, p -= lr·g / (sqrt(v) + eps).

    Keras 3's RMSprop has no option for it, so this overrides its update step for the plain
    (uncentered, no momentum) form the article used, and refuses the others.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.centered or self.momentum:
            raise ValueError("the sqrt(v) + eps form is implemented without centering or momentum")

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        velocity = self._velocities[self._get_variable_index(variable)]
        self.assign(
            velocity,
            ops.add(
                ops.multiply(self.rho, velocity), ops.multiply(1 - self.rho, ops.square(gradient))
            ),
        )
        denominator = ops.add(ops.sqrt(velocity), self.epsilon)
        self.assign_sub(variable, ops.divide(ops.multiply(lr, gradient), denominator))


def make_optimizer(settings: TrainParams) -> keras.optimizers.Optimizer:
    """The configured optimizer at the configured learning rate."""
    if settings.optimizer == "rmsprop":
        if settings.rmsprop_epsilon == "outside_sqrt":
            return RMSpropEpsilonOutside(learning_rate=settings.learning_rate)
        return keras.optimizers.RMSprop(learning_rate=settings.learning_rate)
    if settings.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=settings.learning_rate)
    return keras.optimizers.SGD(
        learning_rate=settings.learning_rate, momentum=settings.sgd_momentum
    )
