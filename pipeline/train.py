"""Stage `train@<variant>-<seed>`: train one variant of the article's CNN, tracked in MLflow."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import keras
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import tensorflow as tf
from matplotlib.ticker import MaxNLocator
from mlflow.models import infer_signature

from pipeline.common.cli import run_seed_stage
from pipeline.common.files import atomic_path, read_json, read_npz, write_json
from pipeline.config.layout import PREPARED_KEYS, Stores, run_name, variant_files
from pipeline.config.params import Params
from pipeline.config.train_params import TrainParams
from pipeline.evidence.landscape import landscape_callback
from pipeline.evidence.probes import probe_callback
from pipeline.records import read_record, write_record
from pipeline.records.data import NormalizationStats, Provenance
from pipeline.records.figures import save
from pipeline.records.history import History, write_history
from pipeline.records.layers import write_landscape, write_preactivations, write_probes
from pipeline.records.runs import RunLink, TrainMetrics, TunedRate
from pipeline.tracking import names, store
from pipeline.tracking.keras_callbacks import (
    MlflowEpochMetrics,
    MlflowLandscapeMetrics,
    MlflowProbeMetrics,
)
from pipeline.training.devices import claim_gpu
from pipeline.training.fit import TrainingResult, train_model
from pipeline.training.inputs import training_data
from pipeline.training.model import export_model
from pipeline.training.runtime import device_description

log = logging.getLogger(__name__)


def final_metrics(
    result: TrainingResult,
    learning_rate: float,
    probe_seconds: float = 0.0,
    landscape_seconds: float = 0.0,
) -> TrainMetrics:
    """The DVC metrics of a training run; `probe_seconds` and `landscape_seconds` are the time
    the probes and the landscape measures took (inside the wall time)."""
    last = result.history[-1]
    return TrainMetrics(
        loss=last["loss"],
        accuracy=last["accuracy"],
        val_loss=last["val_loss"],
        val_accuracy=last["val_accuracy"],
        best_val_accuracy=max(row["val_accuracy"] for row in result.history),
        epochs=len(result.history),
        learning_rate=learning_rate,
        wall_seconds=result.wall_seconds,
        images_per_second=float(np.median([row["images_per_second"] for row in result.history])),
        probe_seconds=probe_seconds,
        probe_overhead=probe_seconds / result.wall_seconds,
        landscape_seconds=landscape_seconds,
        landscape_overhead=landscape_seconds / result.wall_seconds,
    )


def run(params: Params, variant: str, seed: int, stores: Stores) -> TrainMetrics:
    """Train `variant` with `seed` at its tuned rate, log it to MLflow, write its files."""
    claim_gpu(stores.root)  # before TensorFlow first touches a GPU
    name = run_name(variant, seed)
    files = variant_files(params.paths, variant, seed)
    tuned = read_record(files.tuned, TunedRate)
    settings = params.variant(variant).with_learning_rate(tuned.learning_rate)
    experiment_id = store.connect(params.mlflow.experiment, stores.tracking_uri)  # fail fast
    stats = read_record(params.paths.normalization_stats, NormalizationStats)
    provenance = read_record(params.paths.provenance, Provenance)
    data = training_data(read_npz(params.paths.prepared_dataset, PREPARED_KEYS), settings)
    raw_example = read_npz(params.paths.raw_dataset, ("x_train",))["x_train"][:2]

    flat = store.flat_params(params, variant, seed, settings)
    tags = {
        **store.run_tags(variant, provenance.sha256, seed),
        names.DEVICE_TAG: device_description(),
        **stores.run_tags,
    }
    checkpoints = None
    resumed_run_id = None
    if settings.resume:
        checkpoints = checkpoint_folder(stores.root, flat, provenance.sha256)
        if (checkpoints / "mlflow_run.json").is_file():
            resumed_run_id = read_json(checkpoints / "mlflow_run.json")["run_id"]
            store.check_run_usable(
                resumed_run_id, f"start over: delete {checkpoints} (its completed epochs go)"
            )
    with (
        mlflow.start_run(
            run_id=resumed_run_id, experiment_id=experiment_id, run_name=name, tags=tags
        ) as active,
        store.killed_on_interrupt(),
    ):
        run_id = active.info.run_id
        if checkpoints is not None:
            write_json(checkpoints / "mlflow_run.json", {"run_id": run_id})
        mlflow.log_params({**flat, names.LEARNING_RATE_SOURCE_PARAM: tuned.source})
        source = str(params.paths.prepared_dataset)
        store.log_dataset(data.x_train, data.y_train, "train", source, "training")
        validated_on = "test" if settings.validation_data == "test" else "validation"
        store.log_dataset(data.x_val, data.y_val, validated_on, source, "validation")
        log.info(
            "training %s on %s (MLflow run %s); settings: %s",
            name,
            tags[names.DEVICE_TAG],
            run_id,
            changed_settings(settings),
        )
        client = mlflow.MlflowClient()
        # Every seed probes the same images: the data seed picks them.
        probes = probe_callback(data, settings, params.seed, MlflowProbeMetrics(client, run_id))
        landscape = landscape_callback(
            data, settings, params.seed, MlflowLandscapeMetrics(client, run_id)
        )
        result = train_model(
            data,
            settings,
            seed,
            callbacks=[MlflowEpochMetrics(client, run_id)],
            checkpoints=checkpoints,
            probes=probes,
            landscape=landscape,
        )
        exported = export_model(result.model, stats)
        with atomic_path(files.model) as temporary:
            exported.save(temporary)
        write_history(files.history, result.history)
        save(learning_curves_figure(name, result.history), files.learning_curves)
        write_probes(files.probes, probes.rows)
        write_preactivations(files.preactivations, probes.histograms)
        write_landscape(files.landscape, landscape.rows)
        metrics = final_metrics(result, settings.learning_rate, probes.seconds, landscape.seconds)
        write_record(files.train_metrics, metrics)
        mlflow.log_metrics(
            {
                names.metric_name(key): getattr(metrics, key)
                for key in (
                    "best_val_accuracy",
                    "wall_seconds",
                    "probe_seconds",
                    "probe_overhead",
                    "landscape_seconds",
                    "landscape_overhead",
                )
            }
        )
        for artifact in (
            files.history,
            files.learning_curves,
            files.probes,
            files.preactivations,
            files.landscape,
        ):
            mlflow.log_artifact(str(artifact))
        model_id = _log_model(exported, raw_example) if params.mlflow.log_model else None
    write_record(
        files.run, RunLink(run_id=run_id, experiment=params.mlflow.experiment, model_id=model_id)
    )
    log.info("%s: val_accuracy %.4f after %d epochs", name, metrics.val_accuracy, metrics.epochs)
    return metrics


def changed_settings(settings: TrainParams) -> str:
    """The settings that differ from the project's defaults, as `key=value` (dotted keys)."""
    defaults = store.flatten("train", TrainParams().model_dump())
    changed = [
        f"{key.removeprefix('train.')}={value}"
        for key, value in store.flatten("train", settings.model_dump()).items()
        if defaults.get(key) != value
    ]
    return ", ".join(changed) or "the defaults"


def learning_curves_figure(name: str, history: History) -> plt.Figure:
    """Loss and accuracy of one run, side by side."""
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [row["epoch"] for row in history]
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.plot(epochs, [row[metric] for row in history], label="train")
        axes.plot(epochs, [row[f"val_{metric}"] for row in history], "--", label="validation")
        axes.set(xlabel="epoch", ylabel=metric, title=f"{name}: {metric}")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m pipeline.train <variant> [--seed N]`."""
    run_seed_stage(__doc__, run, argv)


def checkpoint_folder(root: Path, settings: dict[str, Any], data_sha256: str) -> Path:
    """Where a resumable run keeps its checkpoints: one folder per variant, settings and data,
    at the project root so that a rerun of a killed `dvc exp run` finds them."""
    key = json.dumps({"settings": settings, "data": data_sha256}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return root / ".cache" / "resume" / f"{settings['variant']}-{digest}"


def _log_model(model: keras.Model, example: np.ndarray) -> str:
    """Log the raw-input model in MLflow's TensorFlow flavor with a signature on uint8 images;
    returns its id, which `models:/<id>` loads.

    The TensorFlow flavor saves Keras 3 models in the .keras format; MLflow's `keras`
    flavor fails to write an input example in this MLflow release.
    """
    signature = infer_signature(example, model.predict(example, verbose=0))
    # MLflow predicts on the input example with Keras' progress bar ("1/1 ━━━━", control codes
    # and all): the only output of that predict, so it is not shown.
    with contextlib.redirect_stdout(io.StringIO()):
        info = mlflow.tensorflow.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            # Explicit requirements: inferring them would reload the model in a subprocess.
            pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
        )
    return str(info.model_id)


if __name__ == "__main__":
    main()
