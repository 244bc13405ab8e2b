"""Keras callbacks of a training run: telemetry, resumption, divergence."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pipeline.common.files import read_json, write_json
from pipeline.evidence.probes import ProbeCallback
from pipeline.records.history import HISTORY_FIELDS, History

log = logging.getLogger(__name__)


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


class RunCheckpoint(keras.callbacks.Callback):
    """Keeps what a run has recorded so far beside its weights checkpoint, and restores it
    on resumption: the history, the probes and the time trained, so that a resumed run's
    files hold every epoch and its wall time counts the epochs before the interruption.

    Keras' BackupAndRestore saves only the model and optimizer; this saves the rest.
    """

    def __init__(self, path: Path, telemetry: EpochTelemetry, probes: ProbeCallback | None) -> None:
        super().__init__()
        self.path = path
        self.telemetry = telemetry
        self.probes = probes
        self.seconds_before = 0.0  # training time of the interrupted process(es)
        self._started = time.perf_counter()
        if path.is_file():
            state = read_json(path)
            telemetry.history = state["history"]
            self.seconds_before = state["wall_seconds"]
            if probes is not None:
                probes.rows = state["probe_rows"]
                probes.histograms = {int(e): layers for e, layers in state["histograms"].items()}
                probes.seconds = state["probe_seconds"]
            log.info("resuming after epoch %d from %s", len(telemetry.history), path.parent)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # Drop what the restored weights do not include: a kill between this file's write
        # and the weights' makes the resumed run repeat that epoch.
        del self.telemetry.history[epoch:]
        if self.probes is not None:
            self.probes.rows = [row for row in self.probes.rows if row["epoch"] <= epoch]
            self.probes.histograms = {
                e: layers for e, layers in self.probes.histograms.items() if e <= epoch
            }

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # Runs after EpochTelemetry and the probes have recorded the epoch.
        state: dict[str, Any] = {
            "history": self.telemetry.history,
            "wall_seconds": self.wall_seconds(),
        }
        if self.probes is not None:
            state |= {
                "probe_rows": self.probes.rows,
                "histograms": self.probes.histograms,
                "probe_seconds": self.probes.seconds,
            }
        write_json(self.path, state)

    def wall_seconds(self) -> float:
        """Training time so far, the interrupted processes' included."""
        return self.seconds_before + time.perf_counter() - self._started


class StopOnNonFiniteLoss(keras.callbacks.TerminateOnNaN):
    """Keras' TerminateOnNaN (a NaN or infinite batch loss stops training), remembering where:
    the one thing Keras' callback does not keep, and the divergence message names."""

    def __init__(self) -> None:
        super().__init__()
        self.failure: str | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch + 1

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_batch_end(batch, logs)
        loss = float((logs or {}).get("loss", 0.0))
        if self.model.stop_training and not math.isfinite(loss) and self.failure is None:
            self.failure = f"loss became {loss} at epoch {self._epoch}, batch {batch + 1}"
