"""What `compare` writes of one experiment's summary: tables, JSON and the CSVs DVC plots."""

from __future__ import annotations

import math
from typing import Any

from pipeline.analysis.render import Table, interval_or_none
from pipeline.analysis.smoothness import smoothness, smoothness_markdown
from pipeline.analysis.stats import CONFIDENCE, Spread
from pipeline.analysis.summary import Summary, VariantGap
from pipeline.analysis.workspace import WorkspaceRun

CURVE_FIELDS = ("variant", "split", "epoch", "loss", "accuracy")
LAYER_FIELDS = (
    "variant",
    "probed",
    "epoch",
    "depth",
    "layer",
    "grad_norm",
    "update_ratio",
    "preact_std",
    "saturated_fraction",
    "mean_derivative",
)


def run_row(run: WorkspaceRun) -> dict[str, Any]:
    """One run (variant and seed): validation and test accuracy, epochs, seconds."""
    return {
        "run": run.name,
        "variant": run.variant,
        "seed": run.seed,
        "best_val_accuracy": max(row["val_accuracy"] for row in run.history),
        "final_val_accuracy": run.history[-1]["val_accuracy"],
        "test_accuracy": run.test.test_accuracy,
        "epochs": len(run.history),
        "wall_seconds": run.train.wall_seconds,
        "learning_rate": run.train.learning_rate,
        "images_per_second": run.train.images_per_second,
    }


def runs_table(runs: list[WorkspaceRun]) -> Table:
    """Every run, one row each."""
    rows = [run_row(run) for run in runs]
    return Table(
        (
            "variant",
            "seed",
            "learning rate",
            "best val acc",
            "final val acc",
            "test acc",
            "epochs",
            "wall s",
            "img/s",
        ),
        "lrrrrrrrr",
        [
            (
                row["variant"],
                str(row["seed"]),
                f"{row['learning_rate']:.2g}",
                f"{row['best_val_accuracy']:.4f}",
                f"{row['final_val_accuracy']:.4f}",
                f"{row['test_accuracy']:.4f}",
                str(row["epochs"]),
                f"{row['wall_seconds']:.0f}",
                f"{row['images_per_second']:.0f}",
            )
            for row in rows
        ],
    )


def seeds_table(summary: Summary) -> Table:
    """Per variant: test and best validation accuracy, mean ± std over its seeds."""
    return Table(
        (
            "variant",
            "seeds",
            "test acc (mean ± std)",
            "best val acc (mean ± std)",
            "val acc fall-back per epoch (runs that learned)",
        ),
        "lrrrr",
        [
            (
                row.variant,
                str(row.seeds),
                f"{row.test_accuracy.mean:.4f} ± {row.test_accuracy.std:.4f}",
                f"{row.best_val_accuracy.mean:.4f} ± {row.best_val_accuracy.std:.4f}",
                roughness_cell(row.roughness),
            )
            for row in summary.rows
        ],
    )


def roughness_cell(roughness: Spread) -> str:
    """Mean ± std of the roughness with its count, or why there is none."""
    if roughness.n == 0:
        return "none learned"
    return f"{roughness.mean:.4f} ± {roughness.std:.4f} ({roughness.n})"


def gap_name(gap: VariantGap) -> str:
    """`bn - plain`: how summary.json names a difference."""
    return f"{gap.variant} - {gap.baseline}"


def gap_lines(summary: Summary) -> list[str]:
    """Each variant's difference to the baseline variant, as a sentence."""
    lines = []
    for gap in summary.between_variants:
        p = gap.test_accuracy.permutation_p
        permutation = "" if math.isnan(p) else f"; exact permutation test p = {p:.3g}"
        lines.append(f"test accuracy, {gap_name(gap)}: {gap.test_accuracy.describe()}{permutation}")
    return lines


def summary_markdown(runs: list[WorkspaceRun], summary: Summary) -> str:
    """summary.md: every run, then the variants across seeds and their differences."""
    bullets = "\n".join(f"- {line}" for line in gap_lines(summary))
    page = (
        f"# Variants compared\n\n{runs_table(runs).markdown()}\n\n"
        f"## Across seeds\n\n{seeds_table(summary).markdown()}\n\n{bullets}\n"
    )
    landscape = smoothness_markdown(smoothness(summary))
    return f"{page}\n## Smoothness\n\n{landscape}" if landscape else page


def variants_json(summary: Summary) -> dict[str, dict[str, Any]]:
    """Per variant: seeds, and test and best validation accuracy as mean and std."""
    return {
        row.variant: {
            "seeds": row.seeds,
            "test_accuracy_mean": row.test_accuracy.mean,
            "test_accuracy_std": row.test_accuracy.std,
            "best_val_accuracy_mean": row.best_val_accuracy.mean,
            "best_val_accuracy_std": row.best_val_accuracy.std,
            "val_accuracy_roughness_mean": row.roughness.mean,
            "val_accuracy_roughness_runs": row.roughness.n,
        }
        for row in summary.rows
    }


def differences_json(summary: Summary) -> dict[str, dict[str, Any]]:
    """Each variant's test accuracy minus the baseline variant's, with its interval."""
    return {
        gap_name(gap): {
            "test_accuracy_difference": gap.test_accuracy.mean,
            "ci_low": interval_or_none(gap.test_accuracy.low),
            "ci_high": interval_or_none(gap.test_accuracy.high),
            "confidence": CONFIDENCE,
            "no_spread": gap.test_accuracy.no_spread,
            "permutation_p": interval_or_none(gap.test_accuracy.permutation_p),
            "description": gap.test_accuracy.describe(),
        }
        for gap in summary.between_variants
    }


def summary_json(runs: list[WorkspaceRun], summary: Summary) -> dict[str, Any]:
    """summary.json: every run, every variant across seeds, every difference."""
    return {
        "runs": {run.name: run_row(run) for run in runs},
        "variants": variants_json(summary),
        "differences": differences_json(summary),
    }


def headline(summary: Summary) -> dict[str, Any]:
    """The few numbers `dvc exp show` puts first: each variant's mean test accuracy and each
    difference to the baseline with its interval (summary.json keeps every number)."""
    return {
        "test_acc": {row.variant: row.test_accuracy.mean for row in summary.rows},
        **{
            gap_name(gap).replace(" ", ""): {
                "diff": gap.test_accuracy.mean,
                "ci_low": interval_or_none(gap.test_accuracy.low),
                "ci_high": interval_or_none(gap.test_accuracy.high),
            }
            for gap in summary.between_variants
        },
    }


def long_curves(runs: list[WorkspaceRun]) -> list[dict[str, Any]]:
    """Curves in long format (variant, split, epoch, loss, accuracy) for DVC's overlay plot."""
    rows = []
    for run in runs:
        for row in run.history:
            for split, prefix in (("train", ""), ("validation", "val_")):
                rows.append(
                    {
                        "variant": run.variant,
                        "split": split,
                        "epoch": int(row["epoch"]),
                        "loss": row[f"{prefix}loss"],
                        "accuracy": row[f"{prefix}accuracy"],
                    }
                )
    return rows


def first_and_last_epochs(runs: list[WorkspaceRun]) -> list[dict[str, Any]]:
    """Per-layer probe rows of each run's first and last probed epoch, for DVC plots."""
    rows = []
    for run in runs:
        epochs = {row["epoch"] for row in run.probes} or {0}
        for row in run.probes:
            for probed, epoch in (("first", min(epochs)), ("last", max(epochs))):
                if row["epoch"] == epoch:
                    # Empty, not 'nan', where a layer has no such value: plots skip it.
                    values = {key: _blank_if_nan(row[key]) for key in LAYER_FIELDS[2:]}
                    rows.append({"variant": run.variant, "probed": probed} | values)
    return rows


def _blank_if_nan(value: Any) -> Any:
    return "" if isinstance(value, float) and math.isnan(value) else value
