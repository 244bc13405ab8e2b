"""Summarize a grid of experiments: finished training runs in MLflow, grouped by the params
that differ between them, each group against a reference group, variant by variant.

    python -m pipeline.ablation [--experiments NAME ...] [--grid NAME ...]
                                [--filter "MLflow filter"]
                                [--reference NAME] [--baseline-variant NAME] [--out PATH]
                                [--add-runs FILE ...]

A grid's runs (`--grid`, pipeline/grid.py) are read as a DVC-queued grid's are; its groups
are named by their factors. Per group and variant: the number of seeds, test accuracy (mean
± std), the difference to the reference group with a 95% Welch interval, how many runs were
still at chance after epoch 1 and at the end (with Fisher's exact test against the
reference), and the first layer's update-to-weight ratio at epoch 1 (geometric mean over
seeds). Within each group that holds several variants, each variant's difference to
`--baseline-variant` (what BN does at that setting), with a 95% Welch interval.

OUT-update_ratios.png draws each group's update-to-weight ratio per layer (first and last
epoch); OUT-landscape.png, where runs were probed, their landscape measures over training.
Every run read is also written, with its params and its per-layer probes (update ratio,
gradient norm, saturated fraction, mean activation derivative, per epoch), to
OUT.runs.json, with the landscape measures of runs that took them (a smoothness section
then follows the table: pipeline/analysis/smoothness.py); `--add-runs` reads such files
back, so that a grid run in parts, on machines whose stores are gone, is summarized whole.
Each run's record also keeps what its training cost and where it ran, and a cost section
closes the table: training minutes per group and variant, the probes' share of them.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mlflow import MlflowClient

from pipeline.analysis.cost import cost_json, cost_markdown, cost_rows, uncosted_runs
from pipeline.analysis.figures import landscape_figure, update_ratio_figure
from pipeline.analysis.mlflow_runs import failed_training_runs, training_runs
from pipeline.analysis.render import grid_json, grid_markdown
from pipeline.analysis.runs import RunResult, with_added_runs, write_runs
from pipeline.analysis.smoothness import (
    landscape_series,
    smoothness,
    smoothness_json,
    smoothness_markdown,
)
from pipeline.analysis.summary import Summary, summarize
from pipeline.analysis.sweep import (
    SweepPoint,
    left_chance_table,
    left_chance_tests,
    sweep_figure,
    sweep_points,
    sweep_table,
)
from pipeline.common.cli import add_common_arguments, run_stage
from pipeline.common.errors import PipelineError
from pipeline.common.files import write_json, write_text
from pipeline.config.params import Params
from pipeline.records.figures import save
from pipeline.tracking import store

log = logging.getLogger(__name__)


def load_runs(
    params: Params,
    filter_string: str,
    experiments: list[str],
    added: list[Path],
    grids: list[str] | None = None,
) -> tuple[list[RunResult], dict[tuple[str, str], int] | None]:
    """The finished training runs in the MLflow store, then those of the added records; and
    the failed training runs per (DVC experiment, variant) in the store, or None when every
    run comes from records (which keep finished runs only, so failures are not known)."""
    store.check_server()
    client = MlflowClient(tracking_uri=store.tracking_uri())
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    if experiment is None:
        raise PipelineError(
            f"the MLflow store {store.tracking_uri()} has no experiment "
            f"{params.mlflow.experiment!r}: run `dvc repro` or `dvc exp run` first"
        )
    stored = training_runs(
        client, experiment.experiment_id, filter_string, experiments, grids or []
    )
    runs = with_added_runs(stored, added)
    failed = (
        failed_training_runs(
            client, experiment.experiment_id, experiments or {run.experiment for run in runs}
        )
        if stored
        else None
    )
    if not runs:
        raise PipelineError(
            "no finished training run matches; check --experiments (names as in "
            "`dvc exp show`), --grid (`python -m pipeline.grid status NAME`) and --filter"
        )
    return runs, failed


def write_summary(
    out: Path,
    summary: Summary,
    runs: list[RunResult],
    sweep: list[SweepPoint] | None = None,
    sweep_key: str = "",
    landscape_from_step: int = 0,
    baseline_variant: str = "plain",
) -> str:
    """OUT.md, OUT.json, OUT.runs.json, OUT-update_ratios.png and, for a sweep,
    OUT-sweep.png; returns the Markdown."""
    table = grid_markdown(summary)
    landscape = smoothness(summary, from_step=landscape_from_step)
    if landscape.rows:
        table += f"\n{smoothness_markdown(landscape)}"
    if sweep:
        table += f"\nThe sweep over {sweep_key}:\n\n{sweep_table(sweep, sweep_key).markdown()}\n"
        tests = left_chance_tests(sweep, baseline_variant)
        if tests:
            table += (
                "\nLeaving chance, each variant against the baseline at each value (Fisher's "
                f"exact test; Holm over the {len(tests)} values):\n\n"
                f"{left_chance_table(tests, sweep_key).markdown()}\n"
            )
        save(sweep_figure(sweep, sweep_key), out.with_name(f"{out.name}-sweep.png"))
    cost = cost_rows(summary)
    if cost:
        table += f"\n{cost_markdown(cost, uncosted_runs(summary))}"
    write_text(out.with_suffix(".md"), table)
    record = grid_json(summary)
    if landscape.rows:
        record["smoothness"] = smoothness_json(landscape)
    if cost:
        record["cost"] = cost_json(cost)
    write_json(out.with_suffix(".json"), record)
    write_runs(out.with_suffix(".runs.json"), runs)
    if landscape.rows:
        save(
            landscape_figure(landscape_series(summary)), out.with_name(f"{out.name}-landscape.png")
        )
    figure = update_ratio_figure(summary.groups)
    if figure is not None:
        save(figure, out.with_name(f"{out.name}-update_ratios.png"))
    return table


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m pipeline.ablation`; `argv` instead of the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--experiments", nargs="+", default=[], help="only the runs of these DVC experiments"
    )
    parser.add_argument(
        "--grid", nargs="+", default=[], help="only the runs of these grids (pipeline.grid)"
    )
    parser.add_argument(
        "--filter",
        default="",
        help="an MLflow filter string, e.g. \"params.`train.epochs` = '10'\"",
    )
    parser.add_argument("--reference", help="the group to compare with (default: the first)")
    parser.add_argument(
        "--baseline-variant",
        default="plain",
        help="within each group, every other variant is compared with this one (default: plain)",
    )
    parser.add_argument(
        "--sweep",
        metavar="PARAM",
        help="the groups differ in this numeric param (e.g. train.learning_rate): also "
        "write which values each variant tolerates, and OUT-sweep.png",
    )
    parser.add_argument(
        "--landscape-from-step",
        type=int,
        default=0,
        metavar="STEP",
        help="the smoothness section reads the landscape measures from this training step on "
        "(default 0: all of them)",
    )
    parser.add_argument(
        "--add-runs",
        nargs="+",
        type=Path,
        default=[],
        help="also the runs in these OUT.runs.json files of earlier summaries",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("ablation/ablation"),
        help="writes OUT.md and OUT.json (default: ablation/ablation)",
    )
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    run_stage(args, lambda params: run(params, args))


def run(params: Params, args: argparse.Namespace) -> Summary:
    """Summarize the runs the arguments choose; print and write the table."""
    runs, failed = load_runs(params, args.filter, args.experiments, args.add_runs, args.grid)
    summary = summarize(runs, args.reference, args.baseline_variant)
    sweep = sweep_points(summary, args.sweep, failed) if args.sweep else None
    print(
        write_summary(
            args.out,
            summary,
            runs,
            sweep,
            args.sweep or "",
            args.landscape_from_step,
            args.baseline_variant,
        )
    )
    log.info(
        "%d runs in %d groups; wrote %s.md, .json, .runs.json",
        len(runs),
        len(summary.groups),
        args.out,
    )
    return summary


if __name__ == "__main__":
    main()
