"""One finished training run as the analysis reads it, and its committed records.

Runs come from the MLflow store (pipeline/analysis/mlflow_runs.py), from the workspace files
of the current experiment (pipeline/analysis/workspace.py) or from the OUT.runs.json files
earlier summaries wrote (here); the summary treats them all alike.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from pipeline.analysis.stats import curve_roughness
from pipeline.common.files import read_json, write_json


@dataclass(frozen=True)
class RunResult:
    """What the analysis reads of one finished training run."""

    run_id: str
    experiment: str  # the DVC experiment's name, or "" outside `dvc exp run`
    variant: str
    seed: str
    params: dict[str, str]
    test_accuracy: float
    val_accuracy_first: float
    val_accuracy_last: float
    first_layer_update: float  # NaN when the run was not probed at epoch 1
    # probe/<layer>/update_ratio per epoch ({layer: {epoch: ratio}}); empty in records
    # written before it was kept
    update_ratios: dict[str, dict[str, float]] = field(default_factory=dict)
    # the other probe statistics ({statistic: {layer: {epoch: value}}}); likewise
    probes: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # validation accuracy per epoch ({epoch: accuracy}); empty in records written before it
    # was kept, which hold only the first and the last
    val_accuracy: dict[str, float] = field(default_factory=dict)
    git_commit: str = ""  # the code the run trained with; "" in records written before
    # landscape/<statistic> per measured training step ({statistic: {step: value}}); empty
    # where the landscape probe was off, and in records written before it was kept
    landscape: dict[str, dict[str, float]] = field(default_factory=dict)
    # what training cost ({wall_seconds, probe_overhead, landscape_overhead}, the overheads as
    # fractions of the training time); empty in records written before it was kept
    cost: dict[str, float] = field(default_factory=dict)
    device: str = ""  # what it trained on (the `device` tag); "" in records written before
    grid: str = ""  # the grid whose cell it was (pipeline/grids/); "" for a DVC-run training

    @property
    def val_accuracy_roughness(self) -> float:
        """`curve_roughness` of the validation accuracy per epoch (NaN without the curve)."""
        return curve_roughness(
            [self.val_accuracy[key] for key in sorted(self.val_accuracy, key=int)]
        )

    @property
    def best_val_accuracy(self) -> float:
        """The best validation accuracy over the epochs (NaN where only two are recorded)."""
        return max(self.val_accuracy.values()) if self.val_accuracy else math.nan


def comparable_params(params: dict[str, str]) -> dict[str, str]:
    """A run's params as today's code names them, so that runs logged before a rename group
    with the runs after it: `train.speed.mixed_precision` (true: everything in bfloat16)
    became `precision` and `float32_nonlinearities`, which has no effect in float32. A local
    `data.source` is reduced to its file name, so that committed records (which keep no
    machine's paths) group with the same archive read elsewhere."""
    params = dict(params)
    if "data.source" in params:  # where a machine keeps the archive is not a setting
        params["data.source"] = PurePath(params["data.source"]).name or params["data.source"]
    mixed = params.pop("train.speed.mixed_precision", None)
    if mixed is not None:
        bfloat16 = mixed == "True"
        params.setdefault("train.speed.precision", "mixed_bfloat16" if bfloat16 else "float32")
        params.setdefault("train.speed.float32_nonlinearities", "False")
    if params.get("train.speed.precision") == "float32":
        params.pop("train.speed.float32_nonlinearities", None)
    return params


def read_runs(path: Path) -> list[RunResult]:
    """The runs an earlier summary wrote to its OUT.runs.json."""
    records = read_json(path)
    return [
        RunResult(**{**record, "params": comparable_params(record["params"])}) for record in records
    ]


def write_runs(path: Path, runs: Iterable[RunResult]) -> None:
    """Every run with its params and per-epoch records, for `read_runs` to read back."""
    write_json(path, [dataclasses.asdict(run) for run in runs])


def with_added_runs(runs: list[RunResult], paths: Iterable[Path]) -> list[RunResult]:
    """`runs`, then those of earlier summaries' OUT.runs.json files, each run once: a later
    part's file holds the runs of the parts it added, too."""
    merged = {run.run_id: run for run in runs}
    for path in paths:
        for run in read_runs(path):
            merged.setdefault(run.run_id, run)
    return list(merged.values())
