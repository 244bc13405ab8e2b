"""Stage `evaluate@<variant>-<seed>`: test metrics and confusion matrix of a trained model."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence

import keras
import matplotlib.pyplot as plt
import mlflow
import numpy as np

from pipeline.common.cli import run_seed_stage
from pipeline.common.errors import PipelineError
from pipeline.common.files import atomic_path, read_npz
from pipeline.config.layout import Stores, VariantFiles, run_name, variant_files
from pipeline.config.params import Params
from pipeline.records import read_record, write_record
from pipeline.records.figures import save
from pipeline.records.runs import RunLink, TestMetrics
from pipeline.tracking import names, store

log = logging.getLogger(__name__)

PREDICT_BATCH_SIZE = 500


def evaluate_predictions(
    probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]
) -> tuple[TestMetrics, np.ndarray]:
    """Test loss, accuracy and per-class accuracy; and the confusion matrix (actual × predicted)."""
    labels = labels.astype(np.int64)
    clipped = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
    predicted = probabilities.argmax(axis=1)
    matrix = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    metrics = TestMetrics(
        test_loss=float(-np.log(clipped).mean()),
        test_accuracy=float((predicted == labels).mean()),
        per_class_accuracy={
            name: float(value) for name, value in zip(class_names, per_class, strict=True)
        },
    )
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


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str], title: str) -> plt.Figure:
    """A confusion matrix with class names and counts."""
    figure, axes = plt.subplots(figsize=(7, 6))
    image = axes.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set(xlabel="predicted", ylabel="actual", title=title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(
            column,
            row,
            str(count),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if count > threshold else "black",
        )
    figure.colorbar(image, ax=axes)
    return figure


def run(params: Params, variant: str, seed: int, stores: Stores) -> TestMetrics:
    """Evaluate the exported model of `variant` and `seed` on the raw test images; write its
    metrics and confusion matrix and add them to its MLflow run."""
    params.variant(variant)  # fails clearly on an unknown variant
    name = run_name(variant, seed)
    files = variant_files(params.paths, variant, seed)
    link = read_record(files.run, RunLink)
    store.connect(params.mlflow.experiment, stores.tracking_uri)  # fail fast, before writing
    store.check_run_usable(link.run_id, f"train again: `dvc repro -f train@{name}`")
    raw = read_npz(params.paths.raw_dataset, ("x_test", "y_test", "class_names"))
    class_names = [str(name) for name in raw["class_names"]]
    if not files.model.is_file():
        raise PipelineError(f"{files.model} does not exist: run `dvc repro` to train first")
    model = keras.models.load_model(files.model)
    # The exported model takes raw uint8 images: this checks the served path end to end.
    probabilities = model.predict(raw["x_test"], batch_size=PREDICT_BATCH_SIZE, verbose=0)
    metrics, matrix = evaluate_predictions(probabilities, raw["y_test"], class_names)
    write_record(files.test_metrics, metrics)
    write_confusion_rows(files, raw["y_test"], probabilities.argmax(axis=1), class_names)
    save(
        confusion_figure(matrix, class_names, f"{name}: test confusion matrix"),
        files.confusion_png,
    )
    with store.resumed_run(link.run_id):
        # The raw images: the exported model normalizes them itself.
        store.log_dataset(
            raw["x_test"], raw["y_test"], "test", str(params.paths.raw_dataset), "evaluation"
        )
        mlflow.log_metrics(
            {
                names.TEST_LOSS: metrics.test_loss,
                names.TEST_ACCURACY: metrics.test_accuracy,
                **{
                    names.class_accuracy_metric(name): value
                    for name, value in metrics.per_class_accuracy.items()
                },
            }
        )
        mlflow.log_artifact(str(files.test_metrics))
        mlflow.log_artifact(str(files.confusion_png))
    log.info("%s: test accuracy %.4f", name, metrics.test_accuracy)
    return metrics


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m pipeline.evaluate <variant> [--seed N]`."""
    run_seed_stage(__doc__, run, argv)


if __name__ == "__main__":
    main()
