"""Callbacks that log a training run's epochs and probes to MLflow as they happen."""

from __future__ import annotations

import math
import time
from typing import Any

import keras
from mlflow.entities import Metric

from pipeline.evidence.probes import Sample
from pipeline.records.history import HISTORY_FIELDS
from pipeline.tracking import names


class MlflowEpochMetrics(keras.callbacks.Callback):
    """Logs each epoch's metrics to an MLflow run with step = epoch (1-based), under the
    names of `names.metric_name` (timings in MLflow's `speed` section)."""

    def __init__(self, client: Any, run_id: str) -> None:
        super().__init__()
        self.client = client
        self.run_id = run_id

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(names.metric_name(key), float(value), timestamp, epoch + 1)
            for key, value in (logs or {}).items()
            if key in HISTORY_FIELDS and math.isfinite(float(value))
        ]
        self.client.log_batch(self.run_id, metrics=metrics)


class MlflowProbeMetrics:
    """Logs each probe sample as `names.probe_metric` metrics with step = epoch
    (MLflow's chart view groups them in a section of their own)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def __call__(self, epoch: int, sample: Sample) -> None:
        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(names.probe_metric(row["layer"], key), float(value), timestamp, epoch)
            for row in sample.rows
            for key, value in row.items()
            if key in names.PROBE_STATISTICS and math.isfinite(float(value))
        ]
        self.client.log_batch(self.run_id, metrics=metrics)


class MlflowLandscapeMetrics:
    """Logs each landscape measure as `names.landscape_metric` metrics, step = training step."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def __call__(self, row: dict[str, float]) -> None:
        timestamp = int(time.time() * 1000)
        step = int(row["step"])
        metrics = [
            Metric(names.landscape_metric(key), float(row[key]), timestamp, step)
            for key in names.LANDSCAPE_STATISTICS
            if math.isfinite(float(row[key]))
        ]
        self.client.log_batch(self.run_id, metrics=metrics)
