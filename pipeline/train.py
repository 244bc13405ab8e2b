"""Stage `train@<variant>-<seed>`: train one variant of the article's CNN, tracked in MLflow."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.data.numpy_dataset import from_numpy
from mlflow.entities import Metric
from mlflow.models import infer_signature
from tensorflow.python.framework import config as tf_config

from pipeline import tracking
from pipeline.cli import run_stage, stage_parser
from pipeline.errors import PipelineError
from pipeline.figures import learning_curves_figure, save
from pipeline.files import atomic_path, read_json, read_npz, write_json
from pipeline.history import HISTORY_FIELDS, History, write_history
from pipeline.layout import project_root, run_name, variant_files
from pipeline.model import augmentation_layers, build_model, export_model
from pipeline.normalize import PREPARED_KEYS
from pipeline.params import Params, SpeedParams, TrainParams, load_params
from pipeline.probes import (
    ProbeCallback,
    Sample,
    fixed_batch,
    write_preactivations,
    write_probes,
)

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
    augment = augmentation_layers(settings.augmentation, seed)
    train = (
        tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train.astype(np.int32)))
        .shuffle(len(data.y_train), seed=seed, reshuffle_each_iteration=True)
        .batch(settings.batch_size)
    )
    if augment.layers:
        train = train.map(
            lambda x, y: (augment(x, training=True), y),
            num_parallel_calls=os.cpu_count() or 1,
            deterministic=True,
        )
    steps = None
    if settings.epoch_fraction < 1:
        # The article's half-epochs: an endless stream cut into shorter "epochs".
        steps = max(1, math.ceil(len(data.y_train) * settings.epoch_fraction / settings.batch_size))
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
    2-core machine (README "Training speed"), while the input runs 10x faster than training
    with any sensible fixed setting, so there is nothing for it to tune.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def make_optimizer(settings: TrainParams) -> Any:
    """The configured optimizer at the configured learning rate."""
    optimizers = {
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.Adam,
        "sgd": keras.optimizers.SGD,
    }
    return optimizers[settings.optimizer](learning_rate=settings.learning_rate)


def compiled_model(settings: TrainParams) -> keras.Model:
    """The variant's model, compiled with its optimizer and speed options."""
    model = build_model(settings, speed=settings.speed)
    model.compile(
        optimizer=make_optimizer(settings),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=settings.speed.jit_compile,
    )
    return model


def train_model(
    data: TrainingData,
    settings: TrainParams,
    seed: int,
    callbacks: list[Any] | None = None,
    checkpoints: Path | None = None,
) -> TrainingResult:
    """Build, compile and fit one variant; raises PipelineError if the loss diverges.

    With `checkpoints`, the model, optimizer and history are saved there after every epoch
    and a call that finds them continues from the last completed epoch (then removes them).
    """
    configure_threads(settings.speed)
    seed_everything(seed, settings.deterministic)
    train, validation, steps = make_datasets(data, settings, seed)
    model = compiled_model(settings)
    images_per_epoch = (steps * settings.batch_size) if steps else len(data.y_train)
    telemetry = EpochTelemetry(images_per_epoch)
    guard = StopOnNonFiniteLoss()
    resuming: list[Any] = []
    if checkpoints is not None:
        # The history is saved before the weights (after EpochTelemetry has added the
        # epoch): a kill between the two only makes the resumed run repeat that epoch.
        resuming = [
            HistoryBackup(checkpoints / "history.json", telemetry),
            keras.callbacks.BackupAndRestore(str(checkpoints / "keras")),
        ]
    started = time.perf_counter()
    model.fit(
        train,
        validation_data=validation,
        epochs=settings.epochs,
        steps_per_epoch=steps,
        callbacks=[telemetry, *resuming, guard, *(callbacks or [])],
        shuffle=False,  # the dataset shuffles itself, seeded; Keras would ignore True anyway
        verbose=2,
    )
    if checkpoints is not None:
        shutil.rmtree(checkpoints, ignore_errors=True)  # done, or diverged: never resume that
    if guard.failure:
        raise PipelineError(
            f"training diverged: {guard.failure}; lower the learning rate "
            "(train.learning_rate or the variant's learning_rate) or enable batch_norm"
        )
    return TrainingResult(model, telemetry.history, time.perf_counter() - started)


class EpochTelemetry(keras.callbacks.Callback):
    """Adds learning rate, epoch seconds and images/s to each epoch's logs; keeps history."""

    def __init__(self, images_per_epoch: int) -> None:
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.history: History = []
        self._epoch_started = 0.0
        self._training_seconds = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_started = time.perf_counter()
        self._training_seconds = 0.0

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        # Validation starts when the epoch's training steps end: images/s counts training only.
        if self._epoch_started and not self._training_seconds:
            self._training_seconds = time.perf_counter() - self._epoch_started

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        epoch_seconds = time.perf_counter() - self._epoch_started
        training_seconds = self._training_seconds or epoch_seconds
        logs["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))
        logs["epoch_seconds"] = epoch_seconds
        logs["images_per_second"] = self.images_per_epoch / training_seconds
        self.history.append(
            {"epoch": epoch + 1, **{key: float(logs[key]) for key in HISTORY_FIELDS[1:]}}
        )


class HistoryBackup(keras.callbacks.Callback):
    """Keeps the epochs' history beside the checkpoint, and restores it on resumption."""

    def __init__(self, path: Path, telemetry: EpochTelemetry) -> None:
        super().__init__()
        self.path = path
        self.telemetry = telemetry
        if path.is_file():
            telemetry.history = read_json(path)
            log.info("resuming after epoch %d from %s", len(telemetry.history), path.parent)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # Drop rows of epochs the restored weights do not include (see train_model).
        del self.telemetry.history[epoch:]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        write_json(self.path, self.telemetry.history)  # after EpochTelemetry's own on_epoch_end


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first NaN or infinite batch loss and remembers where."""

    def __init__(self) -> None:
        super().__init__()
        self.failure: str | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            self.failure = f"loss became {loss} at epoch {self._epoch}, batch {batch + 1}"
            self.model.stop_training = True


class MlflowEpochMetrics(keras.callbacks.Callback):
    """Logs each epoch's metrics to an MLflow run with step = epoch (1-based)."""

    def __init__(self, client: Any, run_id: str) -> None:
        super().__init__()
        self.client = client
        self.run_id = run_id

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), timestamp, epoch + 1)
            for key, value in (logs or {}).items()
            if key in HISTORY_FIELDS and math.isfinite(float(value))
        ]
        self.client.log_batch(self.run_id, metrics=metrics)


def probe_callback(
    data: TrainingData,
    settings: TrainParams,
    seed: int,
    on_sample: Callable[[int, Sample], None] | None = None,
) -> ProbeCallback:
    """Probes on a fixed batch of training images; interval 0 samples nothing."""
    x, y = fixed_batch(data.x_train, data.y_train, settings.probe.images, seed)
    return ProbeCallback(x, y, settings.probe.interval, on_sample)


class MlflowProbeMetrics:
    """Logs each probe sample as `probe.<layer>.<statistic>` metrics with step = epoch."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def __call__(self, epoch: int, sample: Sample) -> None:
        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(f"probe.{row['layer']}.{key}", float(value), timestamp, epoch)
            for row in sample.rows
            for key, value in row.items()
            if key not in ("epoch", "depth", "layer") and math.isfinite(float(value))
        ]
        self.client.log_batch(self.run_id, metrics=metrics)


def final_metrics(
    result: TrainingResult, learning_rate: float, probe_seconds: float = 0.0
) -> dict[str, float]:
    """The DVC metrics of a training run; `probe_seconds` is the time the probes took."""
    last = result.history[-1]
    return {
        "loss": last["loss"],
        "accuracy": last["accuracy"],
        "val_loss": last["val_loss"],
        "val_accuracy": last["val_accuracy"],
        "best_val_accuracy": max(row["val_accuracy"] for row in result.history),
        "epochs": len(result.history),
        "learning_rate": learning_rate,
        "wall_seconds": result.wall_seconds,
        "images_per_second": float(np.median([row["images_per_second"] for row in result.history])),
        "probe_seconds": probe_seconds,
        "probe_overhead": probe_seconds / result.wall_seconds,
    }


def flat_params(params: Params, variant: str, seed: int, settings: TrainParams) -> dict[str, Any]:
    """Every effective hyperparameter of a run, flattened to dotted keys for MLflow."""
    flat: dict[str, Any] = {"variant": variant, "seed": seed, "data.seed": params.seed}
    flat.update(_flatten("train", settings.model_dump()))
    flat.update(_flatten("data", params.data.model_dump(exclude={"url", "md5"})))
    flat["normalize.method"] = params.normalize.method
    return flat


def _flatten(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(f"{prefix}.{key}", value))
        else:
            flat[f"{prefix}.{key}"] = value
    return flat


def main() -> None:
    """Entry point of `python -m pipeline.train <variant>`."""
    run_stage(_run, stage_parser(__doc__, variant=True, seed=True).parse_args())


def _run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    seed = params.seeds[0] if args.seed is None else args.seed
    name = run_name(args.variant, seed)
    files = variant_files(params.paths, args.variant, seed)
    tuned = read_json(files.tuned)
    settings = params.variant(args.variant).model_copy(
        update={"learning_rate": float(tuned["learning_rate"])}
    )
    experiment_id = tracking.connect(params.mlflow.experiment)  # fail fast, before loading
    stats = read_json(params.paths.normalization_stats)
    provenance = read_json(params.paths.provenance)
    data = training_data(read_npz(params.paths.prepared_dataset, PREPARED_KEYS), settings)
    raw_example = read_npz(params.paths.raw_dataset, ("x_train",))["x_train"][:2]

    tags = tracking.run_tags(args.variant, provenance["sha256"], seed)
    checkpoints = None
    resumed_run_id = None
    if settings.resume:
        checkpoints = checkpoint_folder(
            flat_params(params, args.variant, seed, settings), provenance
        )
        if (checkpoints / "mlflow_run.json").is_file():
            resumed_run_id = read_json(checkpoints / "mlflow_run.json")["run_id"]
    with (
        mlflow.start_run(
            run_id=resumed_run_id,
            experiment_id=experiment_id,
            run_name=args.variant,
            tags=tags,
        ) as run,
        tracking.killed_on_interrupt(),
    ):
        run_id = run.info.run_id
        if checkpoints is not None:
            write_json(checkpoints / "mlflow_run.json", {"run_id": run_id})
        mlflow.log_params(
            {
                **flat_params(params, args.variant, seed, settings),
                "train.learning_rate_source": tuned["source"],
            }
        )
        mlflow.log_input(
            from_numpy(
                data.x_train[:1],
                targets=data.y_train[:1],
                source=str(provenance["source"]),
                name="cifar10",
                digest=provenance["sha256"][:32],
            ),
            context="training",
        )
        log.info("training %s (MLflow run %s): %s", name, run_id, settings)
        # Every seed probes the same images: the data seed picks them.
        probes = probe_callback(
            data, settings, params.seed, MlflowProbeMetrics(mlflow.MlflowClient(), run_id)
        )
        result = train_model(
            data,
            settings,
            seed,
            [MlflowEpochMetrics(mlflow.MlflowClient(), run_id), probes],
            checkpoints,
        )
        exported = export_model(result.model, stats)
        with atomic_path(files.model) as temporary:
            exported.save(temporary)
        write_history(files.history, result.history)
        save(learning_curves_figure(name, result.history), files.learning_curves)
        write_probes(files.probes, probes.rows)
        write_preactivations(files.preactivations, probes.histograms)
        metrics = final_metrics(result, settings.learning_rate, probes.seconds)
        write_json(files.train_metrics, metrics)
        mlflow.log_metrics(
            {
                key: metrics[key]
                for key in ("best_val_accuracy", "wall_seconds", "probe_seconds", "probe_overhead")
            }
        )
        for artifact in (files.history, files.learning_curves, files.probes, files.preactivations):
            mlflow.log_artifact(str(artifact))
        if params.mlflow.log_model:
            _log_model(exported, raw_example)
    write_json(files.run, {"run_id": run_id, "experiment": params.mlflow.experiment})
    log.info(
        "%s: val_accuracy %.4f after %d epochs",
        name,
        metrics["val_accuracy"],
        metrics["epochs"],
    )


def checkpoint_folder(settings: dict[str, Any], provenance: dict[str, Any]) -> Path:
    """Where a resumable run keeps its checkpoints: one folder per variant, settings and data,
    at the project root so that a rerun of a killed `dvc exp run` finds them."""
    key = json.dumps({"settings": settings, "data": provenance["sha256"]}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return project_root() / ".cache" / "resume" / f"{settings['variant']}-{digest}"


def _log_model(model: keras.Model, example: np.ndarray) -> None:
    """Log the raw-input model in MLflow's TensorFlow flavor with a signature on uint8 images.

    The TensorFlow flavor saves Keras 3 models in the .keras format; MLflow's `keras`
    flavor fails to write an input example in this MLflow release.
    """
    signature = infer_signature(example, model.predict(example, verbose=0))
    mlflow.tensorflow.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example,
        # Explicit requirements: inferring them would reload the model in a subprocess.
        pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
    )


if __name__ == "__main__":
    main()
