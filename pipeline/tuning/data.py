"""What a study's trials train and validate on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cifar10.sampling import stratified_sample
from pipeline.common.files import array_digest, read_npz
from pipeline.config.train_params import TrainParams
from pipeline.training.inputs import TrainingData, training_data

# The arrays of the prepared dataset that tuning reads: never the test set (the tune stage
# refuses train.validation_data: test).
TUNING_KEYS = ("x_train", "y_train", "x_val", "y_val")


def subset_data(data: TrainingData, size: int | None, seed: int) -> TrainingData:
    """The training images trials see (a stratified, seeded subset) and all validation images."""
    if size is None or size >= len(data.y_train):
        return data
    keep = stratified_sample(data.y_train, size, np.random.default_rng(seed))
    return TrainingData(data.x_train[keep], data.y_train[keep], data.x_val, data.y_val)


def load_tuning_data(
    path: Path, settings: TrainParams, size: int | None, seed: int
) -> TrainingData:
    """Read the prepared dataset once per process and keep only what trials use."""
    arrays = read_npz(path, TUNING_KEYS)
    return subset_data(training_data(arrays, settings), size, seed)


def data_digest(data: TrainingData) -> str:
    """sha256 of the arrays trials see, so that a study never mixes two datasets."""
    return array_digest(data.x_train, data.y_train, data.x_val, data.y_val)
