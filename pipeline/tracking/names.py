"""The names of what runs log to MLflow: metrics and tags, written here only.

The training side logs under these names and the analysis side reads them back, so a rename
is one edit. No TensorFlow or MLflow here: the analysis imports this without training's cost.
"""

from __future__ import annotations

import re

# Tags of every run of this project.
VARIANT_TAG = "variant"
SEED_TAG = "seed"
DATASET_DIGEST_TAG = "dataset_digest"
DEVICE_TAG = "device"
GIT_COMMIT_TAG = "git_commit"
MLFLOW_GIT_COMMIT_TAG = "mlflow.source.git.commit"
HOST_TAG = "pipeline.host"
PID_TAG = "pipeline.pid"
# Set from DVC's environment inside `dvc exp run`.
DVC_EXPERIMENT_TAGS = {
    "DVC_EXP_NAME": "dvc_exp_name",
    "DVC_EXP_BASELINE_REV": "dvc_exp_baseline_rev",
}
DVC_EXPERIMENT_TAG = "dvc_exp_name"
# Set on the runs of a grid's cells (pipeline/grids/): the grid (its Optuna study) and the cell.
GRID_TAG = "grid"
GRID_CELL_TAG = "grid_cell"

# MLflow's chart view groups metrics in sections by the prefix before the last "/": timings go
# to a `speed` section, so the first section holds what people compare (loss, accuracy, test).
SPEED_METRICS = (
    "epoch_seconds",
    "images_per_second",
    "wall_seconds",
    "probe_seconds",
    "probe_overhead",
    "landscape_seconds",
    "landscape_overhead",
)
# What a run's training cost, kept in each run's record (pipeline/analysis/cost.py).
COST_METRICS = ("wall_seconds", "probe_overhead", "landscape_overhead")
VAL_ACCURACY = "val_accuracy"
TEST_ACCURACY = "test_accuracy"
TEST_LOSS = "test_loss"
LEARNING_RATE_SOURCE_PARAM = "train.learning_rate_source"

# The per-layer probe statistics (pipeline/evidence/probes.py computes them), logged per epoch.
PROBE_STATISTICS = (
    "grad_norm",
    "update_ratio",
    "preact_mean",
    "preact_std",
    "saturated_fraction",
    "mean_derivative",
)
# The loss landscape along training's steps (pipeline/evidence/landscape.py), step = training step.
# non_finite: how many of a measure's moved losses and gradient changes were NaN or infinite
# (a step so long the loss blew up); the other statistics are then infinite, never smoothed over.
LANDSCAPE_STATISTICS = (
    "loss_variation",
    "gradient_change",
    "beta_smoothness",
    "gradient_norm",
    "non_finite",
)
_PROBE_METRIC = re.compile(r"probe/(?P<layer>[^/]+)/(?P<statistic>[a-z_]+)")


def metric_name(key: str) -> str:
    """The MLflow name of a history or training metric: timings under `speed/`."""
    return f"speed/{key}" if key in SPEED_METRICS else key


def class_accuracy_metric(class_name: str) -> str:
    """The MLflow name of one class's test accuracy."""
    return f"test_class_accuracy/{class_name}"


def probe_metric(layer: str, statistic: str) -> str:
    """`probe/<layer>/<statistic>`: a section of its own in MLflow's chart view."""
    return f"probe/{layer}/{statistic}"


def parse_probe_metric(name: str) -> tuple[str, str] | None:
    """(layer, statistic) of a name `probe_metric` made, or None for any other metric."""
    match = _PROBE_METRIC.fullmatch(name)
    if match is None or match["statistic"] not in PROBE_STATISTICS:
        return None
    return match["layer"], match["statistic"]


def landscape_metric(statistic: str) -> str:
    """`landscape/<statistic>`: a section of its own in MLflow's chart view."""
    return f"landscape/{statistic}"
