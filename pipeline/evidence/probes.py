"""Per-layer evidence for the article's argument, sampled during training.

On a fixed batch of training images, at the end of every `interval`-th epoch (and the last):

- the norm of each weighted layer's kernel gradient (vanishing gradients show as norms that
  shrink towards the input);
- the update-to-weight ratio ‖ΔW‖/‖W‖ of the epoch's first optimizer step, the real step
  of whatever optimizer is configured;
- the distribution of each activation's input z (the pre-activation): mean, std, the fraction
  in the sigmoid's flat tails (|z| > 4), the mean derivative of the activation at z, and a
  fixed-bin histogram.

Activations are found as the `<layer>_act` layers that `pipeline.training.model` builds; a
pre-activation is keyed by the layer before `_act`. Probing leaves training untouched: the
batch goes through the model without an optimizer step, and BatchNormalization's moving
statistics are put back afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline.config.train_params import TrainParams
from pipeline.records.layers import HISTOGRAM_EDGES, Histograms, ProbeRow
from pipeline.training.inputs import TrainingData

SATURATED_ABOVE = 4.0  # sigmoid'(4) ≈ 0.018, under a tenth of its peak 0.25
PREACTIVATION_FIELDS = ("preact_mean", "preact_std", "saturated_fraction", "mean_derivative")


@dataclass(frozen=True)
class Sample:
    """One probe of the model: per-layer rows and pre-activation histograms."""

    rows: list[ProbeRow]
    histograms: dict[str, list[int]]


def weighted_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers with a kernel (convolutions and dense), input to output."""
    return [layer for layer in model.layers if getattr(layer, "kernel", None) is not None]


def activation_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """`<layer>_act` activation layers by the name of the layer they follow."""
    return {
        layer.name.removesuffix("_act"): layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Activation) and layer.name.endswith("_act")
    }


class LayerProbe:
    """Computes per-layer gradient norms and pre-activation statistics on one fixed batch."""

    def __init__(self, model: keras.Model, x: np.ndarray, y: np.ndarray) -> None:
        self.model = model
        self.layers = weighted_layers(model)
        self.activations = activation_layers(model)
        self.x = tf.constant(x)
        self.y = tf.constant(y.astype(np.int32))
        # The same layers, also returning each activation's input; shares all weights.
        self._outputs = keras.Model(
            model.inputs,
            [model.outputs[0], *(layer.input for layer in self.activations.values())],
        )
        self._compute = tf.function(self._statistics)

    def sample(self, epoch: int) -> Sample:
        """Probe the model as it is now; `epoch` labels the rows."""
        moving = [variable.numpy() for variable in self.model.non_trainable_variables]
        stats = {key: value.numpy() for key, value in self._compute().items()}
        for variable, value in zip(self.model.non_trainable_variables, moving, strict=True):
            variable.assign(value)  # BN's moving statistics: probing must not train them
        rows = []
        histograms = {}
        for depth, layer in enumerate(self.layers, start=1):
            row: ProbeRow = {
                "epoch": epoch,
                "depth": depth,
                "layer": layer.name,
                "grad_norm": float(stats[f"{layer.name}/grad_norm"]),
                "update_ratio": float("nan"),
            }
            for field in PREACTIVATION_FIELDS:
                row[field] = float(stats.get(f"{layer.name}/{field}", float("nan")))
            if f"{layer.name}/histogram" in stats:
                histograms[layer.name] = stats[f"{layer.name}/histogram"].tolist()
            rows.append(row)
        return Sample(rows, histograms)

    def _statistics(self) -> dict[str, tf.Tensor]:
        kernels = [layer.kernel for layer in self.layers]
        with tf.GradientTape() as tape:
            probabilities, *preactivations = self._outputs(self.x, training=True)
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(self.y, probabilities)
            )
        gradients = tape.gradient(loss, kernels)
        stats = {
            f"{layer.name}/grad_norm": tf.norm(tf.cast(gradient, tf.float32))
            for layer, gradient in zip(self.layers, gradients, strict=True)
        }
        for (name, activation), z in zip(self.activations.items(), preactivations, strict=True):
            z = tf.cast(z, tf.float32)
            with tf.GradientTape() as slope:
                slope.watch(z)
                # Elementwise activations: the gradient of the sum is the derivative at each z.
                total = tf.reduce_sum(activation.activation(z))
            derivative = slope.gradient(total, z)
            stats[f"{name}/preact_mean"] = tf.reduce_mean(z)
            stats[f"{name}/preact_std"] = tf.math.reduce_std(z)
            stats[f"{name}/saturated_fraction"] = tf.reduce_mean(
                tf.cast(tf.abs(z) > SATURATED_ABOVE, tf.float32)
            )
            stats[f"{name}/mean_derivative"] = tf.reduce_mean(derivative)
            stats[f"{name}/histogram"] = tf.histogram_fixed_width(
                tf.boolean_mask(z, tf.math.is_finite(z)),  # a diverged model has NaNs
                (HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1]),
                nbins=len(HISTOGRAM_EDGES) - 1,
            )
        return stats


def fixed_batch(
    x: np.ndarray, y: np.ndarray, images: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The same `images` training images at every probe, drawn once with their own RNG."""
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(y), size=min(images, len(y)), replace=False))
    return x[picked], y[picked]


class ProbeCallback(keras.callbacks.Callback):
    """Samples a LayerProbe every `interval` epochs and at the last one; times itself.

    `on_sample(epoch, sample)` receives each sample as it is taken (for MLflow).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        interval: int,
        on_sample: Callable[[int, Sample], None] | None = None,
    ) -> None:
        super().__init__()
        self.x, self.y = x, y
        self.interval = interval
        self.on_sample = on_sample
        self.rows: list[ProbeRow] = []
        self.histograms: Histograms = {}
        self.seconds = 0.0
        self._probe: LayerProbe | None = None
        self._before_step: list[np.ndarray] | None = None
        self._update_ratios: dict[str, float] = {}

    def _due(self, epoch: int) -> bool:
        if self.interval == 0:
            return False
        last = epoch + 1 == self.params.get("epochs")
        return (epoch + 1) % self.interval == 0 or last

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._update_ratios = {}
        self._before_step = None
        if self._due(epoch):
            started = time.perf_counter()
            self._before_step = [np.array(layer.kernel) for layer in weighted_layers(self.model)]
            self.seconds += time.perf_counter() - started

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._before_step is None:
            return
        started = time.perf_counter()
        for layer, before in zip(weighted_layers(self.model), self._before_step, strict=True):
            change = float(np.linalg.norm(np.array(layer.kernel) - before))
            self._update_ratios[layer.name] = change / max(float(np.linalg.norm(before)), 1e-12)
        self._before_step = None
        self.seconds += time.perf_counter() - started

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not self._due(epoch):
            return
        started = time.perf_counter()
        if self._probe is None:
            self._probe = LayerProbe(self.model, self.x, self.y)
        sample = self._probe.sample(epoch + 1)
        for row in sample.rows:
            row["update_ratio"] = self._update_ratios.get(row["layer"], float("nan"))
        self.rows += sample.rows
        self.histograms[epoch + 1] = sample.histograms
        self.seconds += time.perf_counter() - started
        if self.on_sample is not None:
            self.on_sample(epoch + 1, sample)


def probe_callback(
    data: TrainingData,
    settings: TrainParams,
    seed: int,
    on_sample: Callable[[int, Sample], None] | None = None,
) -> ProbeCallback:
    """Probes on a fixed batch of training images; interval 0 samples nothing."""
    x, y = fixed_batch(data.x_train, data.y_train, settings.probe.images, seed)
    return ProbeCallback(x, y, settings.probe.interval, on_sample)
