"""Training one variant: data pipelines, seeding, threads, optimizer and `train_model`.

The library the training stage (pipeline/train.py) and the tuner share; neither's logging
lives here, so editing a stage's tracking does not make the other stale in DVC's eyes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from pipeline.augment import RandomAffine, is_identity
from pipeline.callbacks import EpochTelemetry, RunCheckpoint, StopOnNonFiniteLoss
from pipeline.errors import PipelineError, TrainingDiverged
from pipeline.history import History
from pipeline.landscape import LandscapeCallback, LandscapeRow
from pipeline.model import build_model
from pipeline.optimizers import make_optimizer
from pipeline.params import SpeedParams, TrainParams
from pipeline.probes import ProbeCallback, Sample, fixed_batch

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 500
PREFETCH_BATCHES = 4  # batches prepared ahead of the training step
BN_START_LEFT_LIMIT = 0.01  # share of BN's initial moving statistics a run may leave


@dataclass(frozen=True)
class TrainingData:
    """Normalized training and validation arrays."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


@dataclass
class TrainingResult:
    """A trained model and its per-epoch history."""

    model: Any
    history: History
    wall_seconds: float


def training_data(arrays: dict[str, np.ndarray], settings: TrainParams) -> TrainingData:
    """Pick the validation data: the held-out split, or the test set as the article did."""
    if settings.validation_data == "test":
        log.warning("validating on the test set, as the article did: test metrics are biased")
        return TrainingData(
            arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
        )
    return TrainingData(arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"])


def device_description() -> str:
    """What trains here: each GPU TensorFlow sees by name, else the CPU's model and cores."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [
            tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in gpus
        ]
        return "GPU: " + ", ".join(names)
    return f"CPU: {_cpu_model()}, {os.cpu_count()} cores"


def _cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo ('' where there is none, as off Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def warn_if_bfloat16_is_emulated(speed: SpeedParams) -> None:
    """Mixed bfloat16 on an x86 CPU without AVX512-BF16 or AMX emulates every bfloat16 op."""
    flags = set(_cpuinfo("flags").split())
    if speed.precision != "mixed_bfloat16" or not flags or tf.config.list_physical_devices("GPU"):
        return
    if not flags & {"avx512_bf16", "amx_bf16"}:
        log.warning(
            "train.speed.precision mixed_bfloat16 on a CPU without native bfloat16 (no "
            "avx512_bf16 or amx_bf16): every bfloat16 op is emulated, 2.5-10x slower than "
            "float32 as measured on an AVX2 CPU (docs/speed.md); use float32 here"
        )


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; with `deterministic`, make TF ops deterministic."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        # Process-wide: an earlier deterministic training would otherwise keep XLA off.
        tf_config.disable_op_determinism()


def configure_threads(speed: SpeedParams) -> None:
    """Size TensorFlow's thread pools; they can only change before TensorFlow first runs."""
    wanted = (speed.intra_op_threads, speed.inter_op_threads)
    current = (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )
    if wanted == current:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(speed.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(speed.inter_op_threads)
    except RuntimeError as error:
        raise PipelineError(
            f"cannot change thread settings to {wanted} once TensorFlow has started "
            f"(they are {current}); run one training configuration per process"
        ) from error


def make_datasets(
    data: TrainingData, settings: TrainParams, seed: int
) -> tuple[Any, Any, int | None]:
    """tf.data pipelines: shuffled, augmented-on-graph training batches and validation batches.

    Returns (train, validation, steps_per_epoch); steps is None when an epoch is a full pass.
    """
    train = (
        tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train.astype(np.int32)))
        .shuffle(len(data.y_train), seed=seed, reshuffle_each_iteration=True)
        .batch(settings.batch_size)
    )
    if not is_identity(settings.augmentation):
        augment = RandomAffine(settings.augmentation, seed)

        def augment_images(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return augment(x, training=True), y

        if settings.deterministic:
            # Under op determinism tf.data runs a map with random ops sequentially anyway, by
            # rewriting it into a MapDataset that keeps ParallelMapDataset's attributes, and
            # TensorFlow 2.21 then logs an "E0000 ... use_unbounded_threadpool" line on every
            # run. Asking for the sequential map itself computes the same and logs nothing
            # (and `deterministic=` given to a sequential map only earns a warning).
            train = train.map(augment_images)
        else:
            train = train.map(
                augment_images, num_parallel_calls=os.cpu_count() or 1, deterministic=True
            )
    steps = None
    if settings.epoch_fraction < 1:
        # The article's half-epochs: an endless stream cut into shorter "epochs".
        steps = steps_per_epoch(settings, len(data.y_train))
        train = train.repeat()
    validation = tf.data.Dataset.from_tensor_slices(
        (data.x_val, data.y_val.astype(np.int32))
    ).batch(EVAL_BATCH_SIZE)
    return (
        without_autotune(train.prefetch(PREFETCH_BATCHES)),
        without_autotune(validation.prefetch(PREFETCH_BATCHES)),
        steps,
    )


def without_autotune(dataset: Any) -> Any:
    """`dataset` with tf.data's autotuner off: fixed parallelism and buffers instead.

    With the autotuner on, the first step of about one epoch in three stalled for 5 s on a
    2-core machine (docs/speed.md), while the input runs 10x faster than training
    with any sensible fixed setting, so there is nothing for it to tune.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


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


@contextlib.contextmanager
def deterministic_kernels_required(deterministic: bool) -> Iterator[None]:
    """Turn TensorFlow's refusal of an op without a deterministic kernel (some GPU kernels
    have none) into one message naming the choice: TensorFlow raises it at the op's first
    run, which depends on the device and TensorFlow's version, so it is not known ahead."""
    try:
        yield
    except tf.errors.UnimplementedError as error:
        if not deterministic or "eterministic" not in error.message:
            raise
        first_line = error.message.strip().splitlines()[0]
        raise PipelineError(
            f"train.deterministic is on, but TensorFlow has no deterministic kernel for an op "
            f"of this run on {device_description()} ({first_line}). Set "
            "train.deterministic: false to train anyway (reruns then differ slightly), or "
            "train on the CPU (CUDA_VISIBLE_DEVICES=)"
        ) from error


def warn_if_bn_statistics_lag(settings: TrainParams, total_steps: int) -> None:
    """Warn when BatchNormalization's moving statistics cannot have forgotten their start."""
    lag = bn_statistics_lag(settings, total_steps)
    if lag is not None:
        log.warning("%s: validation and test accuracy will understate the model", lag)


def bn_statistics_lag(settings: TrainParams, total_steps: int) -> str | None:
    """Why BatchNormalization's moving statistics still hold their start after a run, or None.

    They begin at mean 0, variance 1 and move by (1 - momentum) per step; after n steps a
    share momentum**n of the start is left. The variance of sigmoid outputs is ~0.01, so
    even 10% left makes inference divide by a standard deviation several times too large:
    a short run then validates near chance though it trains well.
    """
    left = settings.bn_momentum**total_steps
    if not settings.batch_norm or left <= BN_START_LEFT_LIMIT:
        return None
    return (
        f"{total_steps} training steps at train.bn_momentum {settings.bn_momentum:g} leave "
        f"{100 * left:.0f}% of BatchNormalization's initial moving statistics (variance 1, "
        "where the sigmoid outputs' is ~0.01) in the ones validation and test use. Lower "
        "train.bn_momentum (e.g. 0.9) or train more steps"
    )


def steps_per_epoch(settings: TrainParams, n_images: int) -> int:
    """Training steps in one epoch of `n_images` images (a share of them with epoch_fraction)."""
    return max(1, math.ceil(n_images * settings.epoch_fraction / settings.batch_size))


def landscape_callback(
    data: TrainingData,
    settings: TrainParams,
    seed: int,
    on_row: Callable[[LandscapeRow], None] | None = None,
) -> LandscapeCallback:
    """The landscape along training's steps on the same fixed batch the probes use."""
    x, y = fixed_batch(data.x_train, data.y_train, settings.probe.images, seed)
    return LandscapeCallback(x, y, settings.probe.landscape, on_row)


def probe_callback(
    data: TrainingData,
    settings: TrainParams,
    seed: int,
    on_sample: Callable[[int, Sample], None] | None = None,
) -> ProbeCallback:
    """Probes on a fixed batch of training images; interval 0 samples nothing."""
    x, y = fixed_batch(data.x_train, data.y_train, settings.probe.images, seed)
    return ProbeCallback(x, y, settings.probe.interval, on_sample)
