"""The probes' files: per-layer rows as CSV and pre-activation histograms as JSON.

Apart from pipeline/evidence/probes.py (which needs TensorFlow) so that `compare` reads them without
loading TensorFlow, and an edit to how probes are computed does not rerun it.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common.errors import PipelineError
from pipeline.common.files import read_json, write_csv, write_json
from pipeline.tracking.names import LANDSCAPE_STATISTICS, PROBE_STATISTICS

HISTOGRAM_EDGES = np.linspace(-12.0, 12.0, 97)  # values outside land in the end bins
PROBE_FIELDS = ("epoch", "depth", "layer", *PROBE_STATISTICS)
LANDSCAPE_FIELDS = ("step", *LANDSCAPE_STATISTICS)

ProbeRow = dict[str, Any]
# histograms[epoch][layer] = counts over HISTOGRAM_EDGES
Histograms = dict[int, dict[str, list[int]]]


def write_probes(target: Path, rows: list[ProbeRow]) -> None:
    """The probe rows as CSV (one row per epoch and layer), atomically."""
    write_csv(target, PROBE_FIELDS, rows)


def read_probes(source: Path) -> list[ProbeRow]:
    """Rows written by `write_probes`; numbers as floats ('nan' where not applicable)."""
    if not source.is_file():
        raise PipelineError(f"{source} does not exist: run `dvc repro` to train first")
    with source.open(newline="") as stream:
        return [
            {key: value if key == "layer" else float(value) for key, value in row.items()}
            for row in csv.DictReader(stream)
        ]


def write_preactivations(target: Path, histograms: Histograms) -> None:
    """Pre-activation histograms per epoch and layer, with their bin edges, as JSON."""
    write_json(
        target,
        {
            "edges": HISTOGRAM_EDGES.tolist(),
            "epochs": {str(epoch): layers for epoch, layers in histograms.items()},
        },
    )


def read_preactivations(source: Path) -> tuple[np.ndarray, Histograms]:
    """(bin edges, histograms by epoch and layer) written by `write_preactivations`."""
    data = read_json(source)
    epochs = {int(epoch): layers for epoch, layers in data["epochs"].items()}
    return np.asarray(data["edges"]), epochs


def write_landscape(target: Path, rows: list[dict[str, float]]) -> None:
    """The landscape measures as CSV, one row per measured training step (a header alone when
    the landscape probe is off), atomically."""
    write_csv(target, LANDSCAPE_FIELDS, rows)


def read_landscape(source: Path) -> list[dict[str, float]]:
    """Rows written by `write_landscape`."""
    if not source.is_file():
        raise PipelineError(f"{source} does not exist: run `dvc repro` to train first")
    with source.open(newline="") as stream:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(stream)]
