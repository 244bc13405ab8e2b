"""Training throughput: the article's setup against the pipeline's, in one process.

    python bench/train_speed.py [--images 8192] [--repeats 3] [--xla] [--bf16] [--fp16]
                                [--only a,b,f]

Each configuration trains the same architecture on the same synthetic images (speed does not
depend on pixel values). Configurations are interleaved and repeated; each one's median and
best images/s are reported with the median's ratio to the article's setup, next to the
float32 matmul peak measured in the same run. "slow starts" counts the timed epochs whose first
step took over a second (tf.data's autotuner stalls them; the pipeline switches it off).
`--bf16` adds mixed bfloat16 (activations and BN in float32, and all in bfloat16) at batch 32
and at batch 128, the fastest option; `--fp16` mixed float16; `--xla` adds XLA. Op determinism
(the training stage's default) stays off here so that XLA can run; in separate processes it made
no measurable difference. Figures only: nothing passes or fails.
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

from pipeline.config.train_params import SpeedParams, TrainParams
from pipeline.evidence.probes import probe_callback
from pipeline.tracking.keras_callbacks import MlflowEpochMetrics
from pipeline.training.fit import compiled_model
from pipeline.training.inputs import TrainingData, make_datasets
from pipeline.training.model import build_model

# Multiply-accumulates of one forward pass of the article's CNN on a 32×32×3 image:
# four 3×3 convolutions (32, 32, 64, 64 filters; two at 32×32, two at 16×16) and two dense.
FORWARD_MACS = (
    32 * 32 * 9 * (3 * 32 + 32 * 32) + 16 * 16 * 9 * (32 * 64 + 64 * 64) + 4096 * 128 + 128 * 10
)
# Training costs about three forward passes (forward, and two for the backward pass).
TRAINING_FLOPS_PER_IMAGE = 3 * 2 * FORWARD_MACS
FULL_TRAINING_SPLIT = 45_000  # images per epoch in a default run on full CIFAR-10
SLOW_START_SECONDS = 1.0
FASTEST = "f"  # the key of the fastest documented option


class FusedRMSprop(keras.optimizers.RMSprop):
    """Keras' RMSprop (no momentum, not centered) as TensorFlow's one fused kernel per weight.

    Keras 3 composes the update from separate ops (square, multiply, add, sqrt, divide,
    assign); ResourceApplyRMSProp computes ms = rho·ms + (1 − rho)·g², mom = lr·g / sqrt(ms +
    eps), var −= mom in one pass, the same update. Here only to measure what fusing gains.
    """

    def build(self, var_list: list[Any]) -> None:
        super().build(var_list)
        # The kernel's momentum slot: with momentum 0 it holds the last step, lr·g / sqrt(ms + eps).
        self._last_steps = [self.add_variable_from_reference(v, "last_step") for v in var_list]

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyRMSProp(
            var=variable.handle,
            ms=self._velocities[index].handle,
            mom=self._last_steps[index].handle,
            lr=tf.cast(learning_rate, variable.dtype),
            rho=tf.cast(self.rho, variable.dtype),
            momentum=tf.constant(0.0, variable.dtype),
            epsilon=tf.cast(self.epsilon, variable.dtype),
            grad=tf.cast(gradient, variable.dtype),
        )


class FirstStepTimer(keras.callbacks.Callback):
    """Seconds from the start of each epoch to the end of its first training step."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._started: float | None = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._started is not None:
            self.seconds.append(time.perf_counter() - self._started)
            self._started = None


@dataclass
class Setup:
    """A configuration under test: `epoch(callbacks)` trains one pass over the images."""

    variant: str
    key: str
    name: str
    epoch: Callable[[list[Any]], None]
    images: int


def article_setup(x: np.ndarray, y: np.ndarray, variant: str, batch_norm: bool) -> Setup:
    """The article's input: legacy ImageDataGenerator.flow + fit, batch 32, one-hot labels."""
    # Keras 3 keeps the generator only under its private legacy package.
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    generator = ImageDataGenerator(shear_range=0.2, zoom_range=0.2, horizontal_flip=True)
    flow = generator.flow(x, keras.utils.to_categorical(y, 10), batch_size=32, seed=0)
    # The article's layers: Keras' own BatchNormalization.
    model = build_model(
        TrainParams(batch_norm=batch_norm), speed=SpeedParams(fused_batch_norm=False)
    )
    model.compile(
        optimizer=keras.optimizers.RMSprop(1e-3),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    steps = len(x) // 32

    def epoch(callbacks: list[Any]) -> None:
        model.fit(flow, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=callbacks)

    return Setup(variant, "a", "article (ImageDataGenerator)", epoch, steps * 32)


def pipeline_setup(
    variant: str,
    key: str,
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    settings: TrainParams,
    callbacks: list[Any] | None = None,
    optimizer: keras.optimizers.Optimizer | None = None,
) -> Setup:
    """The pipeline's tf.data input (augmentation on the graph) and training step."""
    data = TrainingData(x, y, x[:256], y[:256])
    train, _, _ = make_datasets(data, settings, seed=0)
    model = compiled_model(settings, optimizer)

    def epoch(timers: list[Any]) -> None:
        model.fit(train, epochs=1, verbose=0, callbacks=[*(callbacks or []), *timers])

    return Setup(variant, key, name, epoch, len(x))


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
    x: np.ndarray, y: np.ndarray, store: Path, xla: bool, bf16: bool, fp16: bool = False
) -> list[Setup]:
    """Every setup for each variant; key "a" is the article's setup."""
    setups = []
    for variant, batch_norm in (("plain", False), ("bn", True)):
        defaults = TrainParams(batch_norm=batch_norm)
        bf16_speed = SpeedParams(precision="mixed_bfloat16")  # activations and BN float32
        all_bf16_speed = bf16_speed.model_copy(update={"float32_nonlinearities": False})
        options: list[tuple[bool, str, str, TrainParams, list[Any] | None]] = [
            (True, "b", "pipeline, defaults", defaults, None),
            (True, "b+", "defaults + MLflow logging", defaults, mlflow_logging(store, variant)),
            (True, "b~", "defaults + probes", defaults, [probes(x, y, defaults)]),
            (
                batch_norm,
                "k",
                "defaults, Keras' own BN layer",
                defaults.model_copy(update={"speed": SpeedParams(fused_batch_norm=False)}),
                None,
            ),
            (True, "c", "batch 128", defaults.model_copy(update={"batch_size": 128}), None),
            (
                True,
                "s",
                "8 steps per execution",
                defaults.model_copy(update={"speed": SpeedParams(steps_per_execution=8)}),
                None,
            ),
            (
                xla,
                "d",
                "XLA (jit_compile)",
                defaults.model_copy(update={"speed": SpeedParams(jit_compile=True)}),
                None,
            ),
            (bf16, "e", "mixed_bfloat16", defaults.model_copy(update={"speed": bf16_speed}), None),
            (
                bf16,
                "e-",
                "mixed_bfloat16, activations and BN too",
                defaults.model_copy(update={"speed": all_bf16_speed}),
                None,
            ),
            (
                fp16,
                "h",
                "mixed_float16, loss scaled",
                defaults.model_copy(update={"speed": SpeedParams(precision="mixed_float16")}),
                None,
            ),
            (
                bf16,
                FASTEST,
                "mixed_bfloat16, batch 128",
                defaults.model_copy(update={"speed": bf16_speed, "batch_size": 128}),
                None,
            ),
        ]
        setups.append(article_setup(x, y, variant, batch_norm))
        setups += [
            pipeline_setup(variant, key, name, x, y, settings, callbacks)
            for wanted, key, name, settings, callbacks in options
            if wanted
        ]
        fused = FusedRMSprop(learning_rate=defaults.learning_rate)
        setups.append(
            pipeline_setup(variant, "o", "fused RMSprop step", x, y, defaults, optimizer=fused)
        )
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
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--xla", action="store_true", help="also train.speed.jit_compile")
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="also train.speed.precision mixed_bfloat16 (and at batch 128)",
    )
    parser.add_argument(
        "--fp16", action="store_true", help="also precision mixed_float16 (pays on GPUs)"
    )
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
    setups = configurations(x, y, store, args.xla, args.bf16, args.fp16)
    if args.only:
        setups = [setup for setup in setups if setup.key in args.only.split(",")]
    for setup in setups:  # warm-up: tracing and first-call allocations
        setup.epoch([])
    speeds: dict[tuple[str, str], list[float]] = {(s.variant, s.key): [] for s in setups}
    timers = {(s.variant, s.key): FirstStepTimer() for s in setups}
    peaks = []
    for _ in range(args.repeats):
        peaks.append(matmul_gflops())
        for setup in setups:
            started = time.perf_counter()
            setup.epoch([timers[(setup.variant, setup.key)]])
            elapsed = time.perf_counter() - started
            speeds[(setup.variant, setup.key)].append(setup.images / elapsed)
    peak = statistics.median(peaks)
    limit = peak * 1e9 / TRAINING_FLOPS_PER_IMAGE
    print(
        f"float32 matmul peak: {peak:.0f} GFLOP/s (median of {args.repeats}); "
        f"{TRAINING_FLOPS_PER_IMAGE / 1e6:.0f} MFLOP per training image "
        f"-> arithmetic limit {limit:.0f} images/s; {args.images} images per epoch"
    )
    medians = {key: statistics.median(values) for key, values in speeds.items()}
    print(
        f"{'variant':8} {'setup':42} {'median img/s':>12} {'best':>6} {'x article':>10} "
        f"{'of limit':>9} {'slow starts':>12}"
    )
    for setup in setups:
        key = (setup.variant, setup.key)
        article = medians.get((setup.variant, "a"), math.nan)
        slow = sum(seconds > SLOW_START_SECONDS for seconds in timers[key].seconds)
        print(
            f"{setup.variant:8} {setup.key + ')':3} {setup.name:38} {medians[key]:12.0f} "
            f"{max(speeds[key]):6.0f} {medians[key] / article:10.2f} "
            f"{medians[key] / limit:9.0%} {slow:>6}/{args.repeats}"
        )
    for variant in ("plain", "bn"):
        article = medians.get((variant, "a"), math.nan)
        off = medians.get((variant, "b"), math.nan)
        if (variant, FASTEST) in medians:
            fastest = medians[(variant, FASTEST)]
            print(
                f"{variant}: defaults {off / article:.2f}x the article's setup; fastest option "
                f"({FASTEST}) {fastest / article:.2f}x, {fastest / limit:.0%} of the limit"
            )
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
