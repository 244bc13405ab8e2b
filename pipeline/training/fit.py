"""Training one variant: compile the model and fit it, with resumption and a divergence guard.

The library the training stage (pipeline/train.py) and the tuner share; neither's logging
lives here, so editing a stage's tracking does not make the other stale in DVC's eyes.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
from tensorflow.python.framework import config as tf_config

from pipeline.common.errors import TrainingDiverged
from pipeline.config.train_params import TrainParams
from pipeline.evidence.landscape import LandscapeCallback
from pipeline.evidence.probes import ProbeCallback
from pipeline.records.history import History
from pipeline.training.bn_statistics import warn_if_bn_statistics_lag
from pipeline.training.callbacks import EpochTelemetry, RunCheckpoint, StopOnNonFiniteLoss
from pipeline.training.inputs import TrainingData, make_datasets, steps_per_epoch
from pipeline.training.model import build_model
from pipeline.training.optimizers import make_optimizer
from pipeline.training.runtime import (
    configure_threads,
    deterministic_kernels_required,
    seed_everything,
    warn_if_bfloat16_is_emulated,
)


@dataclass
class TrainingResult:
    """A trained model and its per-epoch history."""

    model: Any
    history: History
    wall_seconds: float


def compiled_model(
    settings: TrainParams, optimizer: keras.optimizers.Optimizer | None = None
) -> keras.Model:
    """The variant's model, compiled with its optimizer (or `optimizer`) and speed options."""
    model = build_model(settings, speed=settings.speed)
    optimizer = optimizer or make_optimizer(settings)
    if settings.speed.precision == "mixed_float16":
        # float16 gradients underflow below ~6e-8 (this network's first layers' are 1e-7 and
        # less): Keras' dynamic loss scaling keeps them representable. Keras wraps the
        # optimizer itself only under a global mixed_float16 policy, which this model avoids.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=settings.speed.jit_compile,
        steps_per_execution=settings.speed.steps_per_execution,
    )
    return model


def train_model(
    data: TrainingData,
    settings: TrainParams,
    seed: int,
    *,
    callbacks: list[Any] | None = None,
    checkpoints: Path | None = None,
    probes: ProbeCallback | None = None,
    landscape: LandscapeCallback | None = None,
) -> TrainingResult:
    """Build, compile and fit one variant; raises TrainingDiverged if the loss diverges.

    `probes` samples the layers after each epoch it is due. With `checkpoints`, the model,
    optimizer, history, probes and time trained are saved there after every epoch, and a
    call that finds them continues from the last completed epoch (then removes them).
    """
    configure_threads(settings.speed)
    warn_if_bfloat16_is_emulated(settings.speed)
    seed_everything(seed, settings.deterministic)
    train, validation, steps = make_datasets(data, settings, seed)
    model = compiled_model(settings)
    images_per_epoch = (steps * settings.batch_size) if steps else len(data.y_train)
    warn_if_bn_statistics_lag(
        settings, settings.epochs * steps_per_epoch(settings, len(data.y_train))
    )
    telemetry = EpochTelemetry(images_per_epoch)
    guard = StopOnNonFiniteLoss()
    # The landscape first: it measures before a step, so before any other callback's view.
    observers = [
        *([landscape] if landscape is not None else []),
        *(callbacks or []),
        *([probes] if probes is not None else []),
    ]
    checkpoint = None
    resuming: list[Any] = []
    if checkpoints is not None:
        # Last, in this order: the run's record is saved after every callback has added the
        # epoch, and before the weights.
        checkpoint = RunCheckpoint(checkpoints / "run.json", telemetry, probes)
        resuming = [checkpoint, keras.callbacks.BackupAndRestore(str(checkpoints / "keras"))]
    started = time.perf_counter()
    try:
        with deterministic_kernels_required(settings.deterministic):
            model.fit(
                train,
                validation_data=validation,
                epochs=settings.epochs,
                steps_per_epoch=steps,
                callbacks=[telemetry, guard, *observers, *resuming],
                shuffle=False,  # the dataset shuffles itself, seeded; Keras ignores True anyway
                # A live progress bar within each epoch on a terminal; one line per epoch,
                # without control codes, where the output is a log (DVC's, CI's, a file).
                verbose=1 if sys.stdout.isatty() else 2,
            )
    finally:
        # Determinism is training's: Keras' predict on arrays (MLflow's input example) under
        # op determinism makes TensorFlow 2.21 log an "E0000 ... use_unbounded_threadpool"
        # line when tf.data rewrites its parallel map into a sequential one.
        tf_config.disable_op_determinism()
    wall_seconds = (
        checkpoint.wall_seconds() if checkpoint is not None else time.perf_counter() - started
    )
    if checkpoints is not None:
        shutil.rmtree(checkpoints, ignore_errors=True)  # done, or diverged: never resume that
    if guard.failure:
        raise TrainingDiverged(
            f"training diverged: {guard.failure}; lower the learning rate "
            "(train.learning_rate or the variant's learning_rate) or enable batch_norm"
        )
    return TrainingResult(model, telemetry.history, wall_seconds)
