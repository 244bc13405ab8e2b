"""Training throughput: the article's input setup against the pipeline's, in one process.

    python bench/train_speed.py [--images 2048] [--repeats 3] [--xla] [--bf16] [--only a,b,b~]

Each configuration trains the same architecture on the same synthetic images (speed does not
depend on pixel values). Configurations are interleaved and repeated, and the median images/s
of each is reported with its ratio to the article's setup, next to the float32 matmul peak
measured in the same run. `--xla` and `--bf16` add the speed options `train.speed.jit_compile`
and `train.speed.mixed_precision`. Figures only: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import tensorflow as tf

from pipeline.model import build_model
from pipeline.params import SpeedParams, TrainParams
from pipeline.train import (
    MlflowEpochMetrics,
    TrainingData,
    compiled_model,
    make_datasets,
    probe_callback,
)

# Multiply-accumulates of one forward pass of the article's CNN on a 32×32×3 image:
# four 3×3 convolutions (32, 32, 64, 64 filters; two at 32×32, two at 16×16) and two dense.
FORWARD_MACS = (
    32 * 32 * 9 * (3 * 32 + 32 * 32) + 16 * 16 * 9 * (32 * 64 + 64 * 64) + 4096 * 128 + 128 * 10
)
# Training costs about three forward passes (forward, and two for the backward pass).
TRAINING_FLOPS_PER_IMAGE = 3 * 2 * FORWARD_MACS
FULL_TRAINING_SPLIT = 45_000  # images per epoch in a default run on full CIFAR-10


@dataclass
class Setup:
    """A configuration under test: `epoch()` trains one pass over the images."""

    name: str
    epoch: Callable[[], None]
    images: int


def article_setup(x: np.ndarray, y: np.ndarray, batch_norm: bool) -> Setup:
    """The article's input: legacy ImageDataGenerator.flow + fit, batch 32, one-hot labels."""
    # Keras 3 keeps the generator only under its private legacy package.
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    generator = ImageDataGenerator(shear_range=0.2, zoom_range=0.2, horizontal_flip=True)
    flow = generator.flow(x, keras.utils.to_categorical(y, 10), batch_size=32, seed=0)
    model = build_model(TrainParams(batch_norm=batch_norm))
    model.compile(
        optimizer=keras.optimizers.RMSprop(1e-3),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    steps = len(x) // 32

    def epoch() -> None:
        model.fit(flow, steps_per_epoch=steps, epochs=1, verbose=0)

    return Setup("article (ImageDataGenerator)", epoch, steps * 32)


def pipeline_setup(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    settings: TrainParams,
    callbacks: list[Any] | None = None,
) -> Setup:
    """The pipeline's tf.data input (augmentation on the graph) and training step."""
    data = TrainingData(x, y, x[:256], y[:256])
    train, _, _ = make_datasets(data, settings, seed=0)
    model = compiled_model(settings)

    def epoch() -> None:
        model.fit(train, epochs=1, verbose=0, callbacks=callbacks)

    return Setup(name, epoch, len(x))


def mlflow_logging(store: Path, name: str) -> list[Any]:
    """The training stage's per-epoch MLflow logging, into a throwaway SQLite store."""
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    run = client.create_run(client.create_experiment(name), run_name=name)
    return [MlflowEpochMetrics(client, run.info.run_id)]


def probes(x: np.ndarray, y: np.ndarray, settings: TrainParams) -> Any:
    """The training stage's per-layer probes. A benchmark epoch is one call to fit(epochs=1),
    always the last epoch, so every benchmark epoch is probed once."""
    return probe_callback(TrainingData(x, y, x[:256], y[:256]), settings, seed=0)


def configurations(
    x: np.ndarray, y: np.ndarray, store: Path, xla: bool, bf16: bool
) -> list[tuple[str, str, Setup]]:
    """(variant, key, setup) for each variant; key "a" is the article's setup."""
    setups = []
    for variant, batch_norm in (("plain", False), ("bn", True)):
        defaults = TrainParams(batch_norm=batch_norm)
        setups += [
            (variant, "a", article_setup(x, y, batch_norm)),
            (variant, "b", pipeline_setup("pipeline, defaults", x, y, defaults)),
            (
                variant,
                "b+",
                pipeline_setup(
                    "defaults + MLflow logging", x, y, defaults, mlflow_logging(store, variant)
                ),
            ),
            (
                variant,
                "b~",
                pipeline_setup("defaults + probes", x, y, defaults, [probes(x, y, defaults)]),
            ),
            (
                variant,
                "c",
                pipeline_setup(
                    "batch 128, lr x4",
                    x,
                    y,
                    defaults.model_copy(update={"batch_size": 128, "learning_rate": 4e-3}),
                ),
            ),
        ]
        for wanted, key, name, speed in (
            (xla, "d", "XLA (jit_compile)", SpeedParams(jit_compile=True)),
            (bf16, "e", "mixed_bfloat16", SpeedParams(mixed_precision=True)),
        ):
            if wanted:
                settings = defaults.model_copy(update={"speed": speed})
                setups.append((variant, key, pipeline_setup(name, x, y, settings)))
    return setups


def input_pipeline_speed(x: np.ndarray, y: np.ndarray, repeats: int) -> float:
    """Images/s of the default training input pipeline alone (shuffle, batch, augment)."""
    train, _, _ = make_datasets(TrainingData(x, y, x[:256], y[:256]), TrainParams(), seed=0)
    for _ in train:  # warm-up
        pass
    started = time.perf_counter()
    for _ in range(repeats):
        for _ in train:
            pass
    return repeats * len(x) / (time.perf_counter() - started)


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Float32 matrix-product throughput of this process's TensorFlow, in GFLOP/s."""
    a = tf.random.normal((size, size))
    tf.matmul(a, a).numpy()
    started = time.perf_counter()
    for _ in range(repeats):
        tf.matmul(a, a).numpy()
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--xla", action="store_true", help="also train.speed.jit_compile")
    parser.add_argument("--bf16", action="store_true", help="also train.speed.mixed_precision")
    parser.add_argument(
        "--only",
        help="comma-separated setup keys to run, e.g. 'b,b~' for the probe overhead alone",
    )
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.images, 32, 32, 3)).astype(np.float32)
    y = (np.arange(args.images) % 10).astype(np.uint8)
    keras.utils.set_random_seed(0)
    store = Path(tempfile.mkdtemp(prefix="bench-mlflow-"))
    setups = configurations(x, y, store, args.xla, args.bf16)
    if args.only:
        setups = [setup for setup in setups if setup[1] in args.only.split(",")]
    for _, _, setup in setups:  # warm-up: tracing and first-call allocations
        setup.epoch()
    speeds: dict[tuple[str, str], list[float]] = {(v, k): [] for v, k, _ in setups}
    peaks = []
    for _ in range(args.repeats):
        peaks.append(matmul_gflops())
        for variant, key, setup in setups:
            started = time.perf_counter()
            setup.epoch()
            speeds[(variant, key)].append(setup.images / (time.perf_counter() - started))
    peak = statistics.median(peaks)
    limit = peak * 1e9 / TRAINING_FLOPS_PER_IMAGE
    print(
        f"float32 matmul peak: {peak:.0f} GFLOP/s (median of {args.repeats}); "
        f"{TRAINING_FLOPS_PER_IMAGE / 1e6:.0f} MFLOP per training image "
        f"-> arithmetic limit {limit:.0f} images/s"
    )
    medians = {key: statistics.median(values) for key, values in speeds.items()}
    print(f"{'variant':8} {'setup':32} {'median img/s':>12} {'x article':>10} {'of limit':>9}")
    for variant, key, setup in setups:
        median = medians[(variant, key)]
        article = medians.get((variant, "a"), math.nan)
        print(
            f"{variant:8} {key + ')':3} {setup.name:28} {median:12.0f} "
            f"{median / article:10.2f} {median / limit:9.0%}"
        )
    for variant in ("plain", "bn"):
        off = medians.get((variant, "b"), math.nan)
        if (variant, "b+") in medians:
            on = medians[(variant, "b+")]
            print(f"MLflow logging overhead, {variant}: {1 - on / off:+.1%} images/s")
        if (variant, "b~") in medians:
            probed = medians[(variant, "b~")]
            # One probe costs (1/probed - 1/off) seconds per image of the benchmark epoch.
            probe_seconds = args.images * (1 / probed - 1 / off)
            full_epoch = FULL_TRAINING_SPLIT / off
            print(
                f"probe overhead, {variant}: {1 - probed / off:+.1%} images/s with a probe "
                f"every {args.images} images; one probe {probe_seconds:.2f} s = "
                f"{probe_seconds / full_epoch:.2%} of a {FULL_TRAINING_SPLIT}-image epoch"
            )
    print(
        f"input pipeline alone (defaults): {input_pipeline_speed(x, y, args.repeats):.0f} images/s"
    )
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS): {peak_rss:.0f} MB")


if __name__ == "__main__":
    main()
