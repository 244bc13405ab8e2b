"""Training's input: which arrays validate, and the tf.data pipelines that feed the model."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from pipeline.config.train_params import TrainParams
from pipeline.training.augment import RandomAffine, is_identity

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 500
PREFETCH_BATCHES = 4  # batches prepared ahead of the training step


@dataclass(frozen=True)
class TrainingData:
    """Normalized training and validation arrays."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def training_data(arrays: dict[str, np.ndarray], settings: TrainParams) -> TrainingData:
    """Pick the validation data: the held-out split, or the test set as the article did."""
    if settings.validation_data == "test":
        log.warning("validating on the test set, as the article did: test metrics are biased")
        return TrainingData(
            arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
        )
    return TrainingData(arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"])


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


def steps_per_epoch(settings: TrainParams, n_images: int) -> int:
    """Training steps in one epoch of `n_images` images (a share of them with epoch_fraction)."""
    return max(1, math.ceil(n_images * settings.epoch_fraction / settings.batch_size))
