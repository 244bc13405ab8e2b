"""The runs of the current experiment, read from the files its train and evaluate stages
wrote (what `compare` summarizes)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.analysis.runs import RunResult
from pipeline.config.layout import VariantFiles, run_name, variant_files
from pipeline.config.params import Params
from pipeline.records import read_record
from pipeline.records.history import History, read_history
from pipeline.records.layers import (
    Histograms,
    ProbeRow,
    read_landscape,
    read_preactivations,
    read_probes,
)
from pipeline.records.runs import RunLink, TestMetrics, TrainMetrics
from pipeline.tracking.names import COST_METRICS, LANDSCAPE_STATISTICS


@dataclass(frozen=True)
class WorkspaceRun:
    """One variant and seed's files, read."""

    name: str
    variant: str
    seed: int
    files: VariantFiles
    history: History
    train: TrainMetrics
    test: TestMetrics
    link: RunLink
    probes: list[ProbeRow]
    histogram_edges: np.ndarray
    histograms: Histograms
    landscape: list[dict[str, float]]

    def result(self) -> RunResult:
        """The run as the summary reads it (one setting: no params are factors)."""
        ratios: dict[str, dict[str, float]] = {}
        for row in self.probes:
            if math.isfinite(row["update_ratio"]):
                ratios.setdefault(row["layer"], {})[str(int(row["epoch"]))] = row["update_ratio"]
        validation = {str(int(row["epoch"])): row["val_accuracy"] for row in self.history}
        return RunResult(
            run_id=self.link.run_id,
            experiment="",
            variant=self.variant,
            seed=str(self.seed),
            params={},
            test_accuracy=self.test.test_accuracy,
            val_accuracy_first=self.history[0]["val_accuracy"],
            val_accuracy_last=self.history[-1]["val_accuracy"],
            first_layer_update=ratios.get("conv1", {}).get("1", math.nan),
            update_ratios=ratios,
            val_accuracy=validation,
            landscape=(
                {
                    statistic: {str(int(row["step"])): row[statistic] for row in self.landscape}
                    for statistic in LANDSCAPE_STATISTICS
                    if statistic in self.landscape[0]  # landscape.csv before non_finite
                }
                if self.landscape
                else {}
            ),
            cost={key: getattr(self.train, key) for key in COST_METRICS},
        )


def workspace_runs(params: Params) -> list[WorkspaceRun]:
    """Every variant × seed of params.yaml, variant by variant, seeds in their order."""
    runs = []
    for variant in params.variants:
        for seed in params.seeds:
            files = variant_files(params.paths, variant, seed)
            edges, histograms = read_preactivations(files.preactivations)
            runs.append(
                WorkspaceRun(
                    name=run_name(variant, seed),
                    variant=variant,
                    seed=seed,
                    files=files,
                    history=read_history(files.history),
                    train=read_record(files.train_metrics, TrainMetrics),
                    test=read_record(files.test_metrics, TestMetrics),
                    link=read_record(files.run, RunLink),
                    probes=read_probes(files.probes),
                    histogram_edges=edges,
                    histograms=histograms,
                    landscape=read_landscape(files.landscape),
                )
            )
    return runs
