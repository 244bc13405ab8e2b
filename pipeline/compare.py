"""Stage `compare`: the article's figures with every variant overlaid, summary tables over
variants and seeds, and a self-contained report."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import mlflow

from pipeline.analysis import comparison
from pipeline.analysis.figures import (
    curves_figure,
    landscape_figure,
    layer_profile_figure,
    preactivation_figure,
)
from pipeline.analysis.report import write_report
from pipeline.analysis.smoothness import landscape_series, smoothness, smoothness_tables
from pipeline.analysis.summary import Summary, summarize
from pipeline.analysis.workspace import WorkspaceRun, workspace_runs
from pipeline.common.cli import run_stage, stage_parser
from pipeline.common.files import write_csv, write_json, write_text
from pipeline.config.layout import Stores
from pipeline.config.params import Params, PathsParams
from pipeline.records.figures import save
from pipeline.tracking import store

log = logging.getLogger(__name__)


def comparison_files(paths: PathsParams) -> dict[str, Path]:
    """The files `compare` writes."""
    folder = paths.comparison
    return {
        "curves": folder / "curves.csv",
        "loss_png": folder / "loss.png",
        "accuracy_png": folder / "accuracy.png",
        "summary_md": folder / "summary.md",
        "summary_json": folder / "summary.json",
        "headline": folder / "headline.json",
        "layers": folder / "layers.csv",
        "gradients_png": folder / "gradient_norms.png",
        "updates_png": folder / "update_ratios.png",
        "derivatives_png": folder / "activation_derivatives.png",
        "preactivations_png": folder / "preactivations.png",
        "landscape_png": folder / "landscape.png",
    }


def run(params: Params, stores: Stores) -> Summary:
    """Summarize the workspace's runs, write every comparison file and log them to MLflow."""
    experiment_id = store.connect(params.mlflow.experiment, stores.tracking_uri)  # fail fast
    runs = workspace_runs(params)
    variants = list(params.variants)
    summary = summarize(
        [run.result() for run in runs], baseline_variant=variants[0], variant_order=variants
    )
    out = comparison_files(params.paths)
    write_figures(runs, summary, out)
    write_text(out["summary_md"], comparison.summary_markdown(runs, summary))
    write_json(out["summary_json"], comparison.summary_json(runs, summary))
    write_json(out["headline"], comparison.headline(summary))
    write_report(
        params.paths.report,
        comparison.runs_table(runs),
        comparison.seeds_table(summary),
        comparison.gap_lines(summary),
        out,
        params.seeds,
        smoothness_tables(smoothness(summary)),
    )
    log_to_mlflow(experiment_id, runs, summary, [*out.values(), params.paths.report])
    log.info(
        "compared %s:\n%s",
        ", ".join(run.name for run in runs),
        comparison.summary_markdown(runs, summary),
    )
    log.info(
        "where to look: %s (open it in a browser); the runs side by side in MLflow: ./tasks.sh ui",
        params.paths.report,
    )
    return summary


def write_figures(runs: list[WorkspaceRun], summary: Summary, out: dict[str, Path]) -> None:
    """The figures show every seed (mean and range); the CSVs for `dvc plots` the first seed.
    The landscape is drawn from the summary, as `pipeline.ablation` draws it."""
    by_variant: dict[str, list[WorkspaceRun]] = {}
    for run in runs:
        by_variant.setdefault(run.variant, []).append(run)
    first = [seeds[0] for seeds in by_variant.values()]
    write_csv(out["curves"], comparison.CURVE_FIELDS, comparison.long_curves(first))
    write_csv(out["layers"], comparison.LAYER_FIELDS, comparison.first_and_last_epochs(first))
    histories = {v: [run.history for run in seeds] for v, seeds in by_variant.items()}
    save(curves_figure(histories, "loss", "Loss per epoch"), out["loss_png"])
    save(curves_figure(histories, "accuracy", "Accuracy per epoch"), out["accuracy_png"])
    probes = {v: [run.probes for run in seeds] for v, seeds in by_variant.items()}
    for key, field, title, log_scale in (
        ("gradients_png", "grad_norm", "Gradient norm per layer", True),
        ("updates_png", "update_ratio", "Update-to-weight ratio per layer", True),
        ("derivatives_png", "mean_derivative", "Mean activation derivative per layer", False),
    ):
        save(layer_profile_figure(probes, field, title, log_scale=log_scale), out[key])
    histograms = {v: [run.histograms for run in seeds] for v, seeds in by_variant.items()}
    save(preactivation_figure(runs[0].histogram_edges, histograms), out["preactivations_png"])
    save(landscape_figure(landscape_series(summary)), out["landscape_png"])


def log_to_mlflow(
    experiment_id: str, runs: list[WorkspaceRun], summary: Summary, artifacts: list[Path]
) -> None:
    """The `compare` run: the comparison's numbers, linked to each training run, its files."""
    tags = {**store.source_tags(), **{f"run.{run.name}": run.link.run_id for run in runs}}
    with (
        mlflow.start_run(experiment_id=experiment_id, run_name="compare", tags=tags),
        store.killed_on_interrupt(),
    ):
        # Sections of their own in MLflow's chart view, which groups on the prefix before the
        # last "/". Each run's own numbers are in its run; these are the comparison's.
        metrics = {
            f"by_variant/{variant}/{key}": float(value)
            for variant, row in comparison.variants_json(summary).items()
            for key, value in row.items()
            if math.isfinite(float(value))  # no roughness where no run learned
        }
        metrics |= {
            f"difference/{name.replace(' ', '')}/{key}": float(value)
            for name, gap in comparison.differences_json(summary).items()
            for key, value in gap.items()
            if isinstance(value, float)
        }
        mlflow.log_metrics(metrics)
        for path in artifacts:
            mlflow.log_artifact(str(path))


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m pipeline.compare`."""
    args = stage_parser(__doc__).parse_args(argv)
    run_stage(args, lambda params: run(params, Stores.from_environment()))


if __name__ == "__main__":
    main()
