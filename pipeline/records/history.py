"""The per-epoch training history file (a CSV that DVC plots and `compare` reads)."""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.common.errors import PipelineError
from pipeline.common.files import write_csv

HISTORY_FIELDS = (
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "epoch_seconds",
    "images_per_second",
)

History = list[dict[str, float]]


def write_history(target: Path, history: History) -> None:
    """Write the history as CSV, atomically."""
    write_csv(target, HISTORY_FIELDS, history)


def read_history(source: Path) -> History:
    """Read a history CSV written by `write_history`."""
    if not source.is_file():
        raise PipelineError(f"{source} does not exist: run `dvc repro` to train first")
    with source.open(newline="") as stream:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(stream)]
