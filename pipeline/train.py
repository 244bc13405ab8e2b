"""Stage `train@<variant>-<seed>`: train one variant of the article's CNN, tracked in MLflow."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import infer_signature

from pipeline import tracking
from pipeline.cli import run_stage, stage_parser
from pipeline.devices import claim_gpu
from pipeline.figures import learning_curves_figure, save
from pipeline.files import atomic_path, read_json, read_npz, write_json
from pipeline.history import write_history
from pipeline.layout import PREPARED_KEYS, project_root, run_name, variant_files
from pipeline.mlflow_callbacks import MlflowEpochMetrics, MlflowProbeMetrics
from pipeline.model import export_model
from pipeline.params import load_params
from pipeline.probes import write_preactivations, write_probes
from pipeline.training import (
    TrainingResult,
    device_description,
    probe_callback,
    train_model,
    training_data,
)

log = logging.getLogger(__name__)


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


def main() -> None:
    """Entry point of `python -m pipeline.train <variant>`."""
    run_stage(_run, stage_parser(__doc__, variant=True, seed=True).parse_args())


def _run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    claim_gpu(project_root())  # before TensorFlow first touches a GPU
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

    tags = {
        **tracking.run_tags(args.variant, provenance["sha256"], seed),
        "device": device_description(),
    }
    checkpoints = None
    resumed_run_id = None
    if settings.resume:
        checkpoints = checkpoint_folder(
            tracking.flat_params(params, args.variant, seed, settings), provenance
        )
        if (checkpoints / "mlflow_run.json").is_file():
            resumed_run_id = read_json(checkpoints / "mlflow_run.json")["run_id"]
    with (
        mlflow.start_run(
            run_id=resumed_run_id, experiment_id=experiment_id, run_name=name, tags=tags
        ) as run,
        tracking.killed_on_interrupt(),
    ):
        run_id = run.info.run_id
        if checkpoints is not None:
            write_json(checkpoints / "mlflow_run.json", {"run_id": run_id})
        mlflow.log_params(
            {
                **tracking.flat_params(params, args.variant, seed, settings),
                "train.learning_rate_source": tuned["source"],
            }
        )
        source = str(params.paths.prepared_dataset)
        tracking.log_dataset(data.x_train, data.y_train, "train", source, "training")
        validated_on = "test" if settings.validation_data == "test" else "validation"
        tracking.log_dataset(data.x_val, data.y_val, validated_on, source, "validation")
        log.info("training %s on %s (MLflow run %s): %s", name, tags["device"], run_id, settings)
        client = mlflow.MlflowClient()
        # Every seed probes the same images: the data seed picks them.
        probes = probe_callback(data, settings, params.seed, MlflowProbeMetrics(client, run_id))
        result = train_model(
            data, settings, seed, [MlflowEpochMetrics(client, run_id)], checkpoints, probes
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
                tracking.metric_name(key): metrics[key]
                for key in ("best_val_accuracy", "wall_seconds", "probe_seconds", "probe_overhead")
            }
        )
        for artifact in (files.history, files.learning_curves, files.probes, files.preactivations):
            mlflow.log_artifact(str(artifact))
        model_id = _log_model(exported, raw_example) if params.mlflow.log_model else None
    write_json(
        files.run,
        {"run_id": run_id, "experiment": params.mlflow.experiment, "model_id": model_id},
    )
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


def _log_model(model: keras.Model, example: np.ndarray) -> str:
    """Log the raw-input model in MLflow's TensorFlow flavor with a signature on uint8 images;
    returns its id, which `models:/<id>` loads.

    The TensorFlow flavor saves Keras 3 models in the .keras format; MLflow's `keras`
    flavor fails to write an input example in this MLflow release.
    """
    signature = infer_signature(example, model.predict(example, verbose=0))
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
