"""The loss landscape along training's own steps: how smooth the optimization problem is.

Santurkar, Tsipras, Ilyas and Mądry (2018, "How does batch normalization help optimization?",
section 3.2) measure, at points of training, along the step training takes:

- the variation of the loss: its range over steps of several lengths;
- gradient predictiveness: the ℓ2 change of the gradient after such a step;
- the effective β-smoothness: the largest gradient change per unit of distance moved.

They train with SGD and step along −∇L: `train.probe.landscape.direction: gradient` does the
same, at the rates `step_sizes` (the paper's range ends just below the rate at which the
network without BatchNormalization diverges). This project's own variant, the default
`direction: optimizer_update`, steps along the optimizer's update instead: with RMSprop, whose
step rescales each weight's gradient by its running size, that is not the gradient's
direction, and the distance moved no longer scales with the gradient. It is the optimizer's
own update at η = m × the training learning rate, for each multiple m of `step_multiples`
(a quarter to four times the step training takes), from the current gradient and the
optimizer's own state: the landscape where training actually moves. Every
measure is taken on the fixed probe batch, and the weights, the optimizer's state and
BatchNormalization's moving statistics are put back afterwards: training is bit-identical
with the probe on or off (tests/test_landscape.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline.config.train_params import LandscapeParams, TrainParams
from pipeline.evidence.probes import fixed_batch
from pipeline.training.inputs import TrainingData

LandscapeRow = dict[str, float]


class LandscapeProbe:
    """Measures the landscape along the optimizer's step on one fixed batch."""

    def __init__(self, model: keras.Model, x: np.ndarray, y: np.ndarray, settings: LandscapeParams):
        self.model = model
        self.settings = settings
        self.x = tf.constant(x)
        self.y = tf.constant(y.astype(np.int32))
        self._loss_and_gradients = tf.function(self._compute)

    def _compute(self) -> tuple[tf.Tensor, list[tf.Tensor]]:
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            probabilities = self.model(self.x, training=True)
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(self.y, probabilities)
            )
        return loss, tape.gradient(loss, variables)

    def measure(self) -> LandscapeRow:
        """Loss variation, largest gradient change, effective β-smoothness and ‖∇L‖ here."""
        model, optimizer = self.model, self.model.optimizer
        variables = model.trainable_variables
        if not optimizer.built:  # before the first step: build its state as that step would
            optimizer.build(variables)
        weights = [variable.numpy() for variable in variables]
        moving = [variable.numpy() for variable in model.non_trainable_variables]
        state = [variable.numpy() for variable in optimizer.variables]
        learning_rate = float(optimizer.learning_rate)
        loss, gradients = self._loss_and_gradients()
        flat = _flatten(gradients)
        losses, changes, ratios = [float(loss)], [], []
        sizes = self.settings.step_sizes or [
            multiple * learning_rate for multiple in self.settings.step_multiples
        ]
        try:
            for size in sizes:
                if self.settings.direction == "gradient":
                    _assign(
                        variables,
                        [w - size * np.asarray(g) for w, g in zip(weights, gradients, strict=True)],
                    )
                else:
                    optimizer.learning_rate = size
                    optimizer.apply_gradients(zip(gradients, variables, strict=True))
                distance = math.sqrt(
                    sum(
                        float(np.sum(np.square(v.numpy() - w)))
                        for v, w in zip(variables, weights, strict=True)
                    )
                )
                moved_loss, moved_gradients = self._loss_and_gradients()
                change = float(np.linalg.norm(_flatten(moved_gradients) - flat))
                losses.append(float(moved_loss))
                changes.append(change)
                ratios.append(change / distance if distance > 0 else math.nan)
                _assign(variables, weights)
                _assign(optimizer.variables, state)
        finally:
            optimizer.learning_rate = learning_rate
            _assign(variables, weights)
            _assign(optimizer.variables, state)
            _assign(model.non_trainable_variables, moving)
        # A step that blows the loss or gradient up is recorded as such, infinite and counted,
        # never dropped: dropping it would read as a smoother landscape.
        non_finite = sum(not math.isfinite(value) for value in [*losses[1:], *changes])
        blown_up = not all(math.isfinite(value) for value in changes)
        return {
            "loss_variation": math.inf if non_finite else max(losses) - min(losses),
            "gradient_change": math.inf if blown_up else max(changes),
            "beta_smoothness": math.inf
            if blown_up
            else max((r for r in ratios if math.isfinite(r)), default=math.nan),
            "gradient_norm": float(np.linalg.norm(flat)),
            "non_finite": float(non_finite),
        }


def _flatten(tensors: list[tf.Tensor]) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(tensor, dtype=np.float64)) for tensor in tensors])


def _assign(variables: list[Any], values: list[np.ndarray]) -> None:
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


class LandscapeCallback(keras.callbacks.Callback):
    """Measures the landscape before every `every_steps`-th training step (up to
    `until_step`) and once more after the last; times itself. `on_row(row)` receives each."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        settings: LandscapeParams,
        on_row: Callable[[LandscapeRow], None] | None = None,
    ) -> None:
        super().__init__()
        self.x, self.y = x, y
        self.settings = settings
        self.on_row = on_row
        self.rows: list[LandscapeRow] = []
        self.seconds = 0.0
        self._probe: LandscapeProbe | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.every_steps > 0

    def _due(self, step: int) -> bool:
        until = self.settings.until_step
        return (
            self.enabled and step % self.settings.every_steps == 0 and (not until or step <= until)
        )

    def _steps_done(self) -> int:
        # The optimizer's own count: right with steps_per_execution > 1 and after a resume.
        return int(self.model.optimizer.iterations.numpy())

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        step = self._steps_done()
        if self._due(step):
            self._record(step)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        step = self._steps_done()
        if self.enabled and (not self.rows or self.rows[-1]["step"] != step):
            self._record(step)

    def _record(self, step: int) -> None:
        started = time.perf_counter()
        if self._probe is None:
            self._probe = LandscapeProbe(self.model, self.x, self.y, self.settings)
        row = {"step": float(step), **self._probe.measure()}
        self.rows.append(row)
        self.seconds += time.perf_counter() - started
        if self.on_row is not None:
            self.on_row(row)


def landscape_callback(
    data: TrainingData,
    settings: TrainParams,
    seed: int,
    on_row: Callable[[LandscapeRow], None] | None = None,
) -> LandscapeCallback:
    """The landscape along training's steps on the same fixed batch the probes use."""
    x, y = fixed_batch(data.x_train, data.y_train, settings.probe.images, seed)
    return LandscapeCallback(x, y, settings.probe.landscape, on_row)
