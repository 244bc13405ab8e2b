"""Augmentation throughput: the one-warp RandomAffine against the three Keras layers it
replaced (RandomShear, RandomZoom, RandomFlip), on the training input pipeline, in one process.

    python bench/augment_speed.py [--images 8192] [--repeats 5]

Both run as the pipeline runs them: a tf.data map over batches of 32, with as many parallel
calls as cores, autotuning off. Interleaved and repeated; prints each one's median images/s
and their ratio. Figures only: nothing passes or fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline.config.train_params import AugmentationParams
from pipeline.training.augment import RandomAffine
from pipeline.training.inputs import without_autotune
from pipeline.training.runtime import device_description

BATCH = 32


def three_layers(seed: int) -> keras.Sequential:
    """The augmentation the pipeline used before: shear factor 0.2, zoom 0.2, flip."""
    return keras.Sequential(
        [
            keras.layers.RandomShear(0.2, 0.2, seed=seed),
            keras.layers.RandomZoom((-0.2, 0.2), seed=seed + 1),
            keras.layers.RandomFlip("horizontal", seed=seed + 2),
        ]
    )


def pipeline(x: np.ndarray, augment: Callable[..., Any]) -> Any:
    """Batches of `x` through `augment` on tf.data's threads."""
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(BATCH)
    dataset = dataset.map(
        lambda images: augment(images, training=True),
        num_parallel_calls=os.cpu_count() or 1,
        deterministic=True,
    )
    return without_autotune(dataset.prefetch(4))


def images_per_second(dataset: Any, count: int) -> float:
    started = time.perf_counter()
    for _ in dataset:
        pass
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    x = np.random.default_rng(0).normal(size=(args.images, 32, 32, 3)).astype(np.float32)
    setups = {
        "three Keras layers (before)": pipeline(x, three_layers(0)),
        "RandomAffine, default": pipeline(x, RandomAffine(AugmentationParams(), 0)),
        "RandomAffine, article's": pipeline(
            x,
            RandomAffine(
                AugmentationParams(shear_degrees=0.2, independent_zoom=True, fill_mode="nearest"),
                0,
            ),
        ),
    }
    for dataset in setups.values():  # warm-up: trace the map functions
        images_per_second(dataset, args.images)
    speeds: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(args.repeats):
        for name, dataset in setups.items():
            speeds[name].append(images_per_second(dataset, args.images))
    print(f"{device_description()}; {args.images} images, batch {BATCH}")
    baseline = statistics.median(next(iter(speeds.values())))
    for name, values in speeds.items():
        median = statistics.median(values)
        print(f"{name:30s} {median:9,.0f} img/s  ({median / baseline:.2f}x the layers)")


if __name__ == "__main__":
    main()
