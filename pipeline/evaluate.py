"""Stage `evaluate@<variant>-<seed>`: test metrics and confusion matrix of a trained model."""

from __future__ import annotations

import argparse
import csv
import logging
from typing import Any

import keras
import mlflow
import numpy as np

from pipeline import tracking
from pipeline.cli import run_stage, stage_parser
from pipeline.errors import PipelineError
from pipeline.figures import confusion_figure, save
from pipeline.files import atomic_path, read_json, read_npz, write_json
from pipeline.layout import VariantFiles, run_name, variant_files
from pipeline.params import load_params

log = logging.getLogger(__name__)

PREDICT_BATCH_SIZE = 500


def evaluate_predictions(
    probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]
) -> tuple[dict[str, Any], np.ndarray]:
    """Test loss, accuracy and per-class accuracy; and the confusion matrix (actual × predicted)."""
    labels = labels.astype(np.int64)
    clipped = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
    predicted = probabilities.argmax(axis=1)
    matrix = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    metrics = {
        "test_loss": float(-np.log(clipped).mean()),
        "test_accuracy": float((predicted == labels).mean()),
        "per_class_accuracy": {
            name: float(value) for name, value in zip(class_names, per_class, strict=True)
        },
    }
    return metrics, matrix


def write_confusion_rows(
    files: VariantFiles, labels: np.ndarray, predicted: np.ndarray, class_names: list[str]
) -> None:
    """One row per test image (actual, predicted) for DVC's confusion template."""
    with atomic_path(files.confusion) as temporary, temporary.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["actual", "predicted"])
        writer.writerows(
            (class_names[actual], class_names[guess])
            for actual, guess in zip(labels, predicted, strict=True)
        )


def main() -> None:
    """Entry point of `python -m pipeline.evaluate <variant>`."""
    run_stage(_run, stage_parser(__doc__, variant=True, seed=True).parse_args())


def _run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    params.variant(args.variant)  # fails clearly on an unknown variant
    seed = params.seeds[0] if args.seed is None else args.seed
    name = run_name(args.variant, seed)
    files = variant_files(params.paths, args.variant, seed)
    run = read_json(files.run)
    raw = read_npz(params.paths.raw_dataset, ("x_test", "y_test", "class_names"))
    class_names = [str(name) for name in raw["class_names"]]
    if not files.model.is_file():
        raise PipelineError(f"{files.model} does not exist: run `dvc repro` to train first")
    model = keras.models.load_model(files.model)
    # The exported model takes raw uint8 images: this checks the served path end to end.
    probabilities = model.predict(raw["x_test"], batch_size=PREDICT_BATCH_SIZE, verbose=0)
    metrics, matrix = evaluate_predictions(probabilities, raw["y_test"], class_names)
    write_json(files.test_metrics, metrics)
    write_confusion_rows(files, raw["y_test"], probabilities.argmax(axis=1), class_names)
    save(
        confusion_figure(matrix, class_names, f"{name}: test confusion matrix"),
        files.confusion_png,
    )
    tracking.connect(params.mlflow.experiment)
    with mlflow.start_run(run_id=run["run_id"]), tracking.killed_on_interrupt():
        # The raw images: the exported model normalizes them itself.
        tracking.log_dataset(
            raw["x_test"], raw["y_test"], "test", str(params.paths.raw_dataset), "evaluation"
        )
        mlflow.log_metrics(
            {
                "test_loss": metrics["test_loss"],
                "test_accuracy": metrics["test_accuracy"],
                **{
                    f"test_class_accuracy/{name}": value
                    for name, value in metrics["per_class_accuracy"].items()
                },
            }
        )
        mlflow.log_artifact(str(files.test_metrics))
        mlflow.log_artifact(str(files.confusion_png))
    log.info("%s: test accuracy %.4f", name, metrics["test_accuracy"])


if __name__ == "__main__":
    main()
