"""Summarize a grid of experiments: finished training runs in MLflow, grouped by the params
that differ between them, each group against a reference group, variant by variant.

    python -m pipeline.ablation [--experiments NAME ...] [--filter "MLflow filter"]
                                [--reference NAME] [--baseline-variant NAME] [--out PATH]
                                [--add-runs FILE ...]

Per group and variant: the number of seeds, test accuracy (mean ± std), the difference to
the reference group with a 95% Welch interval, how many runs were still at chance after
epoch 1 and at the end (with Fisher's exact test against the reference), and the first
layer's update-to-weight ratio at epoch 1 (geometric mean over seeds). Within each group that
holds several variants, each variant's difference to `--baseline-variant` (what BN does at
that setting), with a 95% Welch interval.

OUT-update_ratios.png draws each group's update-to-weight ratio per layer (first and last
epoch). Every run read is also written, with its params and its per-layer probes (update
ratio, gradient norm, saturated fraction, mean activation derivative, per epoch), to
OUT.runs.json; `--add-runs` reads such files back, so that a grid run in parts, on machines
whose stores are gone, is summarized whole.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import re
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient
from mlflow.entities import Run
from scipy import stats

from pipeline import tracking
from pipeline.chance import at_chance
from pipeline.cli import add_common_arguments, run_stage
from pipeline.errors import PipelineError
from pipeline.figures import layer_profile_figure, save
from pipeline.files import read_json, write_json, write_text
from pipeline.params import load_params
from pipeline.seed_stats import difference, spread

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

log = logging.getLogger(__name__)

# Params that do not change what a run learns, or that tell its replicates apart.
NOT_A_FACTOR = frozenset(
    {
        "seed",
        "variant",
        "train.learning_rate_source",
        "train.resume",
        "train.probe.interval",
        "train.probe.images",
        "train.speed.intra_op_threads",
        "train.speed.inter_op_threads",
        "train.speed.steps_per_execution",  # the same steps, the same weights
    }
)


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


# The per-layer probes each run's record keeps, so that a mechanism read off them rests on
# committed records; the pre-activation mean, std and histograms stay in MLflow.
PROBE = re.compile(
    r"probe/(?P<layer>[^/]+)/"
    r"(?P<statistic>update_ratio|grad_norm|saturated_fraction|mean_derivative)"
)


@dataclass(frozen=True)
class RunResult:
    """What the ablation reads of one finished training run."""

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
    # PROBE's other statistics ({statistic: {layer: {epoch: value}}}); likewise
    probes: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


@dataclass
class Group:
    """Runs that share every factor: one setting of the grid."""

    factors: dict[str, str]
    experiments: list[str] = field(default_factory=list)
    runs: list[RunResult] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Its DVC experiment names, or its factors where it has none."""
        if self.experiments:
            return ", ".join(self.experiments)
        return ", ".join(f"{key}={value}" for key, value in self.factors.items()) or "all"


def training_runs(
    client: MlflowClient,
    experiment_id: str,
    filter_string: str = "",
    experiments: Iterable[str] = (),
) -> list[RunResult]:
    """The finished training runs, oldest first: those the evaluate stage gave a test accuracy
    (tuning and compare runs have none)."""
    query = "attributes.status = 'FINISHED' and metrics.test_accuracy >= 0"
    if filter_string:
        query += f" and {filter_string}"
    wanted = set(experiments)
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"])
    chosen = [run for run in runs if not wanted or run.data.tags.get("dvc_exp_name") in wanted]
    return [read_run(client, run) for run in chosen]


def read_runs(path: Path) -> list[RunResult]:
    """The runs an earlier summary wrote to its OUT.runs.json."""
    records = read_json(path)
    return [
        RunResult(**{**record, "params": comparable_params(record["params"])}) for record in records
    ]


def with_added_runs(runs: list[RunResult], paths: Iterable[Path]) -> list[RunResult]:
    """`runs`, then those of earlier summaries' OUT.runs.json files, each run once: a later
    part's file holds the runs of the parts it added, too."""
    merged = {run.run_id: run for run in runs}
    for path in paths:
        for run in read_runs(path):
            merged.setdefault(run.run_id, run)
    return list(merged.values())


def read_run(client: MlflowClient, run: Run) -> RunResult:
    """The metrics the table needs, from the run and its per-epoch histories."""
    history = sorted(client.get_metric_history(run.info.run_id, "val_accuracy"), key=_step)
    probes: dict[str, dict[str, dict[str, float]]] = {}
    for key in run.data.metrics:
        if match := PROBE.fullmatch(key):
            probes.setdefault(match["statistic"], {})[match["layer"]] = _per_epoch(client, run, key)
    # Kept in a field of their own, as records written before the other probes have them.
    update_ratios = probes.pop("update_ratio", {})
    first_update = update_ratios.get("conv1", {}).get("1")
    return RunResult(
        run_id=run.info.run_id,
        experiment=run.data.tags.get("dvc_exp_name", ""),
        variant=run.data.tags.get("variant", run.data.params.get("variant", "")),
        seed=run.data.tags.get("seed", run.data.params.get("seed", "")),
        params=comparable_params(dict(run.data.params)),
        test_accuracy=run.data.metrics["test_accuracy"],
        val_accuracy_first=history[0].value if history else math.nan,
        val_accuracy_last=history[-1].value if history else math.nan,
        first_layer_update=first_update if first_update is not None else math.nan,
        update_ratios=update_ratios,
        probes=probes,
    )


def _per_epoch(client: MlflowClient, run: Run, key: str) -> dict[str, float]:
    return {
        str(metric.step): metric.value for metric in client.get_metric_history(run.info.run_id, key)
    }


def _step(metric: Any) -> int:
    return int(metric.step)


def group_runs(runs: list[RunResult]) -> list[Group]:
    """Groups of runs with equal values of every param that differs between runs of the same
    variant (the settings a variant itself changes, such as train.batch_norm, are not factors)."""
    keys = sorted({key for run in runs for key in run.params} - NOT_A_FACTOR)
    variants = {run.variant for run in runs}
    factors = [
        key
        for key in keys
        if any(
            len({run.params.get(key, "") for run in runs if run.variant == variant}) > 1
            for variant in variants
        )
    ]
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        signature = tuple(run.params.get(key, "") for key in factors)
        group = groups.setdefault(signature, Group(dict(zip(factors, signature, strict=True))))
        group.runs.append(run)
        if run.experiment and run.experiment not in group.experiments:
            group.experiments.append(run.experiment)
    return list(groups.values())


def pick_reference(groups: list[Group], name: str | None) -> Group:
    """The group named `name` (a DVC experiment, or its full name), else the first."""
    if name is None:
        return groups[0]
    for group in groups:
        if name in group.experiments or name == group.name:
            return group
    known = "; ".join(group.name for group in groups)
    raise PipelineError(f"no group is called {name!r}; the groups are: {known}")


def summary_rows(groups: list[Group], reference: Group) -> list[dict[str, Any]]:
    """One row per group and variant, compared with the reference group's same variant."""
    rows = []
    for group in groups:
        for variant in sorted({run.variant for run in group.runs}):
            runs = [run for run in group.runs if run.variant == variant]
            baseline = [run for run in reference.runs if run.variant == variant]
            rows.append(_row(group, variant, runs, baseline, group is reference))
    return rows


def _row(
    group: Group,
    variant: str,
    runs: list[RunResult],
    baseline: list[RunResult],
    is_reference: bool,
) -> dict[str, Any]:
    accuracy = spread([run.test_accuracy for run in runs])
    row: dict[str, Any] = {
        "group": group.name,
        "variant": variant,
        "seeds": len(runs),
        "test_accuracy_mean": accuracy.mean,
        "test_accuracy_std": accuracy.std,
        "stuck_after_epoch_1": _stuck(runs, lambda run: run.val_accuracy_first),
        "stuck_at_end": _stuck(runs, lambda run: run.val_accuracy_last),
        "first_layer_update_ratio": _geometric_mean([run.first_layer_update for run in runs]),
        "runs": {run.seed: run.run_id for run in runs},
        "reference": is_reference,
    }
    if baseline and not is_reference:
        gap = difference(
            [run.test_accuracy for run in runs], [run.test_accuracy for run in baseline]
        )
        row |= {
            "difference": gap.mean,
            "ci_low": None if math.isnan(gap.low) else gap.low,
            "ci_high": None if math.isnan(gap.high) else gap.high,
            "stuck_after_epoch_1_p": _fisher(runs, baseline, lambda run: run.val_accuracy_first),
            "stuck_at_end_p": _fisher(runs, baseline, lambda run: run.val_accuracy_last),
        }
    return row


def variant_differences(groups: list[Group], baseline: str) -> list[dict[str, Any]]:
    """Within each group holding `baseline` and other variants, each other variant's test
    accuracy minus the baseline's, with a 95% Welch interval (what the variant does there)."""
    rows = []
    for group in groups:
        accuracy: dict[str, list[float]] = {}
        for run in group.runs:
            accuracy.setdefault(run.variant, []).append(run.test_accuracy)
        if baseline not in accuracy:
            continue
        for variant in sorted(set(accuracy) - {baseline}):
            gap = difference(accuracy[variant], accuracy[baseline])
            rows.append(
                {
                    "group": group.name,
                    "variant": variant,
                    "baseline": baseline,
                    "seeds": [len(accuracy[variant]), len(accuracy[baseline])],
                    "difference": gap.mean,
                    "ci_low": None if math.isnan(gap.low) else gap.low,
                    "ci_high": None if math.isnan(gap.high) else gap.high,
                }
            )
    return rows


def _stuck(runs: list[RunResult], accuracy: Callable[[RunResult], float]) -> int:
    return sum(at_chance(accuracy(run)) for run in runs)


def _fisher(
    runs: list[RunResult], baseline: list[RunResult], accuracy: Callable[[RunResult], float]
) -> float:
    """Two-sided p of Fisher's exact test: stuck or not, this group against the reference."""
    table = [
        [_stuck(runs, accuracy), len(runs) - _stuck(runs, accuracy)],
        [_stuck(baseline, accuracy), len(baseline) - _stuck(baseline, accuracy)],
    ]
    return float(stats.fisher_exact(table).pvalue)


def _geometric_mean(values: list[float]) -> float:
    """Update ratios span decades between runs: their geometric mean, NaN if any is missing."""
    finite = [value for value in values if math.isfinite(value) and value > 0]
    if len(finite) != len(values) or not finite:
        return math.nan
    return math.exp(statistics.fmean(math.log(value) for value in finite))


def layer_depth(layer: str) -> tuple[int, int]:
    """Input to output: conv1..convN, then dense, then the classifier."""
    if layer.startswith("conv") and layer[4:].isdigit():
        return (0, int(layer[4:]))
    return (1, 0) if layer == "dense" else (2, 0)


def update_ratio_figure(groups: list[Group]) -> plt.Figure | None:
    """Each group and variant's update-to-weight ratio per layer, first and last epoch (the
    comparable measure of how much a layer learns across variants; None without probes)."""
    profiles: dict[str, list[list[dict[str, Any]]]] = {}
    for group in groups:
        for variant in sorted({run.variant for run in group.runs}):
            per_seed = [
                [
                    {"epoch": int(epoch), "depth": depth, "layer": layer, "update_ratio": ratio}
                    for depth, layer in enumerate(sorted(run.update_ratios, key=layer_depth))
                    for epoch, ratio in run.update_ratios[layer].items()
                ]
                for run in group.runs
                if run.variant == variant and run.update_ratios
            ]
            if per_seed:
                profiles[f"{group.name} ({variant})"] = per_seed
    if not profiles:
        return None
    figure = layer_profile_figure(
        profiles, "update_ratio", "Update-to-weight ratio per layer", log_scale=True
    )
    # A grid has more groups than the plot has room for a legend inside it.
    figure.set_size_inches(10.5, 4.8)
    figure.axes[0].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    figure.tight_layout()
    return figure


def markdown(
    groups: list[Group],
    rows: list[dict[str, Any]],
    reference: Group,
    between_variants: list[dict[str, Any]] | None = None,
) -> str:
    """The table, the variants' differences within each group, then each group's factors."""
    lines = [
        f"Reference: {reference.name}. Stuck: validation accuracy ≤ 0.11 (chance is 0.10); "
        "p: Fisher's exact test against the reference; update ratio: ‖ΔW‖/‖W‖ of conv1 in "
        "epoch 1's first step, geometric mean over seeds.",
        "",
        "| group | variant | seeds | test acc (mean ± std) | difference, 95% CI "
        "| stuck after epoch 1 (p) | stuck at end (p) | conv1 update ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['group']} | {row['variant']} | {row['seeds']} "
            f"| {row['test_accuracy_mean']:.4f} ± {row['test_accuracy_std']:.4f} "
            f"| {_difference_cell(row)} "
            f"| {row['stuck_after_epoch_1']}/{row['seeds']}{_p(row, 'stuck_after_epoch_1_p')} "
            f"| {row['stuck_at_end']}/{row['seeds']}{_p(row, 'stuck_at_end_p')} "
            f"| {row['first_layer_update_ratio']:.2e} |"
        )
    if between_variants:
        lines += [
            "",
            "Between variants, within each group (Welch 95% CI):",
            "",
            "| group | difference | seeds | test acc difference, 95% CI |",
            "|---|---|---:|---:|",
        ]
        lines += [
            f"| {row['group']} | {row['variant']} − {row['baseline']} "
            f"| {row['seeds'][0]} vs {row['seeds'][1]} | {_difference_cell(row)} |"
            for row in between_variants
        ]
    lines += ["", "Groups:", ""]
    lines += [
        f"- {group.name}: "
        + (", ".join(f"`{key}={value}`" for key, value in group.factors.items()) or "one group")
        for group in groups
    ]
    return "\n".join(lines) + "\n"


def _difference_cell(row: dict[str, Any]) -> str:
    if row.get("reference"):
        return "reference"
    if "difference" not in row:
        return "no reference runs"
    if row["ci_low"] is None:
        return f"{row['difference']:+.4f} (one seed)"
    return f"{row['difference']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"


def _p(row: dict[str, Any], key: str) -> str:
    return f" ({row[key]:.3g})" if key in row else ""


def main() -> None:
    """Entry point of `python -m pipeline.ablation`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--experiments", nargs="+", default=[], help="only the runs of these DVC experiments"
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
    run_stage(_run, parser.parse_args())


def _run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    tracking.check_server()
    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    if experiment is None:
        raise PipelineError(
            f"the MLflow store {tracking.tracking_uri()} has no experiment "
            f"{params.mlflow.experiment!r}: run `dvc repro` or `dvc exp run` first"
        )
    runs = with_added_runs(
        training_runs(client, experiment.experiment_id, args.filter, args.experiments),
        args.add_runs,
    )
    if not runs:
        raise PipelineError(
            "no finished training run matches; check --experiments (names as in "
            "`dvc exp show`) and --filter"
        )
    groups = group_runs(runs)
    reference = pick_reference(groups, args.reference)
    rows = summary_rows(groups, reference)
    between = variant_differences(groups, args.baseline_variant)
    table = markdown(groups, rows, reference, between)
    write_text(args.out.with_suffix(".md"), table)
    write_json(
        args.out.with_suffix(".json"),
        {
            "reference": reference.name,
            "groups": [
                {"name": group.name, "experiments": group.experiments, "factors": group.factors}
                for group in groups
            ],
            "rows": rows,
            "between_variants": between,
        },
    )
    write_json(args.out.with_suffix(".runs.json"), [dataclasses.asdict(run) for run in runs])
    figure = update_ratio_figure(groups)
    if figure is not None:
        save(figure, args.out.with_name(f"{args.out.name}-update_ratios.png"))
    print(table)
    log.info(
        "%d runs in %d groups; wrote %s.md, .json, .runs.json", len(runs), len(groups), args.out
    )


if __name__ == "__main__":
    main()
