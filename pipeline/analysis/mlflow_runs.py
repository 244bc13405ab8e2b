"""The finished training runs of an MLflow experiment, read as RunResults."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run

from pipeline.analysis.runs import RunResult, comparable_params
from pipeline.tracking import names

# The per-layer probes each run's record keeps, so that a mechanism read off them rests on
# committed records; the pre-activation mean, std and histograms stay in MLflow.
KEPT_PROBES = frozenset({"update_ratio", "grad_norm", "saturated_fraction", "mean_derivative"})


def training_runs(
    client: MlflowClient,
    experiment_id: str,
    filter_string: str = "",
    experiments: Iterable[str] = (),
    grids: Iterable[str] = (),
) -> list[RunResult]:
    """The finished training runs, oldest first: those the evaluate stage gave a test accuracy
    (tuning and compare runs have none); with `experiments` or `grids`, only the runs of
    those DVC experiments and grids (pipeline/grids/)."""
    query = f"attributes.status = 'FINISHED' and metrics.{names.TEST_ACCURACY} >= 0"
    if filter_string:
        query += f" and {filter_string}"
    wanted, wanted_grids = set(experiments), set(grids)
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"])
    chosen = [
        run
        for run in runs
        if not (wanted or wanted_grids)
        or run.data.tags.get(names.DVC_EXPERIMENT_TAG) in wanted
        or run.data.tags.get(names.GRID_TAG) in wanted_grids
    ]
    return [read_run(client, run) for run in chosen]


def read_run(client: MlflowClient, run: Run) -> RunResult:
    """The metrics the summary needs, from the run and its per-epoch histories."""
    validation = _per_epoch(client, run, names.VAL_ACCURACY)
    probes: dict[str, dict[str, dict[str, float]]] = {}
    for key in run.data.metrics:
        parsed = names.parse_probe_metric(key)
        if parsed is not None and parsed[1] in KEPT_PROBES:
            layer, statistic = parsed
            probes.setdefault(statistic, {})[layer] = _per_epoch(client, run, key)
    landscape = {
        statistic: _per_epoch(client, run, names.landscape_metric(statistic))
        for statistic in names.LANDSCAPE_STATISTICS
        if names.landscape_metric(statistic) in run.data.metrics
    }
    # Kept in a field of their own, as records written before the other probes have them.
    update_ratios = probes.pop("update_ratio", {})
    first_update = update_ratios.get("conv1", {}).get("1")
    epochs = sorted(validation, key=int)
    tags = run.data.tags
    return RunResult(
        run_id=run.info.run_id,
        experiment=tags.get(names.DVC_EXPERIMENT_TAG, ""),
        variant=tags.get(names.VARIANT_TAG, run.data.params.get("variant", "")),
        seed=tags.get(names.SEED_TAG, run.data.params.get("seed", "")),
        params=comparable_params(dict(run.data.params)),
        test_accuracy=run.data.metrics[names.TEST_ACCURACY],
        val_accuracy_first=validation[epochs[0]] if epochs else math.nan,
        val_accuracy_last=validation[epochs[-1]] if epochs else math.nan,
        first_layer_update=first_update if first_update is not None else math.nan,
        update_ratios=update_ratios,
        probes=probes,
        val_accuracy={epoch: validation[epoch] for epoch in epochs},
        git_commit=tags.get(names.GIT_COMMIT_TAG, tags.get(names.MLFLOW_GIT_COMMIT_TAG, "")),
        landscape=landscape,
        cost={
            key: run.data.metrics[names.metric_name(key)]
            for key in names.COST_METRICS
            if names.metric_name(key) in run.data.metrics
        },
        device=tags.get(names.DEVICE_TAG, ""),
        grid=tags.get(names.GRID_TAG, ""),
    )


def _per_epoch(client: MlflowClient, run: Run, key: str) -> dict[str, float]:
    """A metric's history by step (the epoch, or the training step for `landscape/`)."""
    return {
        str(metric.step): metric.value
        for metric in sorted(client.get_metric_history(run.info.run_id, key), key=_step)
    }


def _step(metric: Any) -> int:
    return int(metric.step)


def failed_training_runs(
    client: MlflowClient, experiment_id: str, experiments: Iterable[str]
) -> dict[tuple[str, str], int]:
    """FAILED training runs (a diverged loss fails its run) per (DVC experiment, variant)."""
    wanted = set(experiments)
    counts: dict[tuple[str, str], int] = {}
    for run in client.search_runs([experiment_id], "attributes.status = 'FAILED'"):
        tags = run.data.tags
        name, variant = tags.get(names.DVC_EXPERIMENT_TAG, ""), tags.get(names.VARIANT_TAG, "")
        if (
            name in wanted
            and variant
            and run.info.run_name == f"{variant}-{tags.get(names.SEED_TAG)}"
        ):
            counts[(name, variant)] = counts.get((name, variant), 0) + 1
    return counts
