"""Stage `compare`: the article's figures with every variant overlaid, summary tables over
variants and seeds, and a self-contained report."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import mlflow

from pipeline import tracking
from pipeline.cli import run_stage, stage_parser
from pipeline.figures import curves_figure, layer_profile_figure, preactivation_figure, save
from pipeline.files import read_json, write_csv, write_json, write_text
from pipeline.history import History, read_history
from pipeline.layout import run_name, variant_files
from pipeline.params import PathsParams, load_params
from pipeline.probes import ProbeRow, read_preactivations, read_probes
from pipeline.report import write_report
from pipeline.seed_stats import CONFIDENCE, difference, spread

log = logging.getLogger(__name__)

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
    }


def summary_rows(
    keys: dict[str, tuple[str, int]],
    histories: dict[str, History],
    train: dict[str, Any],
    test: dict[str, Any],
) -> list[dict[str, Any]]:
    """One row per run (variant and seed): validation and test accuracy, epochs, seconds."""
    return [
        {
            "run": name,
            "variant": keys[name][0],
            "seed": keys[name][1],
            "best_val_accuracy": max(row["val_accuracy"] for row in history),
            "final_val_accuracy": history[-1]["val_accuracy"],
            "test_accuracy": test[name]["test_accuracy"],
            "epochs": len(history),
            "wall_seconds": train[name]["wall_seconds"],
            "learning_rate": train[name]["learning_rate"],
            "images_per_second": train[name]["images_per_second"],
        }
        for name, history in histories.items()
    ]


def rows_by_variant(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The per-run rows grouped by variant, in the order the variants first appear."""
    variants: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        variants.setdefault(row["variant"], []).append(row)
    return variants


def across_seeds(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: test and best validation accuracy as mean ± std over its seeds."""
    summary = {}
    for variant, runs in rows_by_variant(rows).items():
        test = spread([run["test_accuracy"] for run in runs])
        val = spread([run["best_val_accuracy"] for run in runs])
        summary[variant] = {
            "seeds": test.n,
            "test_accuracy_mean": test.mean,
            "test_accuracy_std": test.std,
            "best_val_accuracy_mean": val.mean,
            "best_val_accuracy_std": val.std,
        }
    return summary


def differences(rows: list[dict[str, Any]], baseline: str) -> dict[str, dict[str, Any]]:
    """Each other variant's test accuracy minus the baseline's, with a confidence interval."""
    accuracies = {
        variant: [run["test_accuracy"] for run in runs]
        for variant, runs in rows_by_variant(rows).items()
    }
    result = {}
    for variant, values in accuracies.items():
        if variant == baseline:
            continue
        gap = difference(values, accuracies[baseline])
        result[f"{variant} - {baseline}"] = {
            "test_accuracy_difference": gap.mean,
            "ci_low": None if math.isnan(gap.low) else gap.low,
            "ci_high": None if math.isnan(gap.high) else gap.high,
            "confidence": CONFIDENCE,
            "description": gap.describe(),
        }
    return result


def headline(
    variants: dict[str, dict[str, Any]], gaps: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The few numbers `dvc exp show` puts first: each variant's mean test accuracy and each
    difference to the baseline with its interval (summary.json keeps every number)."""
    return {
        "test_acc": {name: row["test_accuracy_mean"] for name, row in variants.items()},
        **{
            name.replace(" ", ""): {
                "diff": gap["test_accuracy_difference"],
                "ci_low": gap["ci_low"],
                "ci_high": gap["ci_high"],
            }
            for name, gap in gaps.items()
        },
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The per-run summary as a Markdown table."""
    lines = [
        "| variant | seed | learning rate | best val acc | final val acc | test acc | epochs "
        "| wall s | img/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {row['variant']} | {row['seed']} | {row['learning_rate']:.2g} "
        f"| {row['best_val_accuracy']:.4f} | {row['final_val_accuracy']:.4f} "
        f"| {row['test_accuracy']:.4f} | {row['epochs']} "
        f"| {row['wall_seconds']:.0f} | {row['images_per_second']:.0f} |"
        for row in rows
    ]
    return "\n".join(lines) + "\n"


def seeds_markdown(variants: dict[str, dict[str, Any]], gaps: dict[str, dict[str, Any]]) -> str:
    """Mean ± std over seeds per variant, then each difference to the baseline."""
    lines = [
        "| variant | seeds | test acc (mean ± std) | best val acc (mean ± std) |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {row['seeds']} | {row['test_accuracy_mean']:.4f} ± "
        f"{row['test_accuracy_std']:.4f} | {row['best_val_accuracy_mean']:.4f} ± "
        f"{row['best_val_accuracy_std']:.4f} |"
        for name, row in variants.items()
    ]
    lines += [""] + [f"- test accuracy, {name}: {gap['description']}" for name, gap in gaps.items()]
    return "\n".join(lines) + "\n"


def long_curves(histories: dict[str, History]) -> list[dict[str, Any]]:
    """Curves in long format (variant, split, epoch, loss, accuracy) for DVC's overlay plot."""
    rows = []
    for name, history in histories.items():
        for row in history:
            for split, prefix in (("train", ""), ("validation", "val_")):
                rows.append(
                    {
                        "variant": name,
                        "split": split,
                        "epoch": int(row["epoch"]),
                        "loss": row[f"{prefix}loss"],
                        "accuracy": row[f"{prefix}accuracy"],
                    }
                )
    return rows


def first_and_last_epochs(probes: dict[str, list[ProbeRow]]) -> list[dict[str, Any]]:
    """Per-layer probe rows of each variant's first and last probed epoch, for DVC plots."""
    rows = []
    for name, probe_rows in probes.items():
        epochs = {row["epoch"] for row in probe_rows} or {0}
        for row in probe_rows:
            for probed, epoch in (("first", min(epochs)), ("last", max(epochs))):
                if row["epoch"] == epoch:
                    # Empty, not 'nan', where a layer has no such value: plots skip it.
                    values = {key: _blank_if_nan(row[key]) for key in LAYER_FIELDS[2:]}
                    rows.append({"variant": name, "probed": probed} | values)
    return rows


def _blank_if_nan(value: Any) -> Any:
    return "" if isinstance(value, float) and math.isnan(value) else value


def main() -> None:
    """Entry point of `python -m pipeline.compare`."""
    run_stage(_run, stage_parser(__doc__).parse_args())


def _run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    keys = {
        run_name(variant, seed): (variant, seed)
        for variant in params.variants
        for seed in params.seeds
    }
    runs = {name: variant_files(params.paths, *key) for name, key in keys.items()}
    histories = {name: read_history(f.history) for name, f in runs.items()}
    train = {name: read_json(f.train_metrics) for name, f in runs.items()}
    test = {name: read_json(f.test_metrics) for name, f in runs.items()}
    run_ids = {name: read_json(f.run)["run_id"] for name, f in runs.items()}
    rows = summary_rows(keys, histories, train, test)
    variants = across_seeds(rows)
    gaps = differences(rows, baseline=next(iter(params.variants)))

    # The figures show every seed (mean and range); the CSVs for `dvc plots` the first seed.
    by_variant = {
        variant: [run_name(variant, seed) for seed in params.seeds] for variant in params.variants
    }
    first = {variant: names[0] for variant, names in by_variant.items()}
    out = comparison_files(params.paths)
    write_csv(
        out["curves"],
        CURVE_FIELDS,
        long_curves({variant: histories[name] for variant, name in first.items()}),
    )
    seed_histories = {v: [histories[name] for name in names] for v, names in by_variant.items()}
    save(curves_figure(seed_histories, "loss", "Loss per epoch"), out["loss_png"])
    save(curves_figure(seed_histories, "accuracy", "Accuracy per epoch"), out["accuracy_png"])
    probes = {
        v: [read_probes(runs[name].probes) for name in names] for v, names in by_variant.items()
    }
    write_csv(
        out["layers"],
        LAYER_FIELDS,
        first_and_last_epochs({variant: probes[variant][0] for variant in probes}),
    )
    save(
        layer_profile_figure(probes, "grad_norm", "Gradient norm per layer", log_scale=True),
        out["gradients_png"],
    )
    save(
        layer_profile_figure(
            probes, "update_ratio", "Update-to-weight ratio per layer", log_scale=True
        ),
        out["updates_png"],
    )
    save(
        layer_profile_figure(probes, "mean_derivative", "Mean activation derivative per layer"),
        out["derivatives_png"],
    )
    preactivations = {
        v: [read_preactivations(runs[name].preactivations) for name in names]
        for v, names in by_variant.items()
    }
    edges = next(iter(preactivations.values()))[0][0]
    histograms = {v: [run for _, run in seed_runs] for v, seed_runs in preactivations.items()}
    save(preactivation_figure(edges, histograms), out["preactivations_png"])
    table = markdown_table(rows)
    seeds_table = seeds_markdown(variants, gaps)
    write_text(
        out["summary_md"],
        f"# Variants compared\n\n{table}\n## Across seeds\n\n{seeds_table}",
    )
    write_json(
        out["summary_json"],
        {"runs": {row["run"]: row for row in rows}, "variants": variants, "differences": gaps},
    )
    write_json(out["headline"], headline(variants, gaps))
    write_report(params.paths.report, table, seeds_table, out, params.seeds)

    experiment_id = tracking.connect(params.mlflow.experiment)
    tags = {**tracking.source_tags(), **{f"run.{name}": run_id for name, run_id in run_ids.items()}}
    with (
        mlflow.start_run(experiment_id=experiment_id, run_name="compare", tags=tags),
        tracking.killed_on_interrupt(),
    ):
        # Sections of their own in MLflow's chart view, which groups on the prefix before the
        # last "/". Each run's own numbers are in its run; these are the comparison's.
        metrics = {
            f"by_variant/{variant}/{key}": float(value)
            for variant, row in variants.items()
            for key, value in row.items()
        }
        metrics |= {
            f"difference/{name.replace(' ', '')}/{key}": float(value)
            for name, gap in gaps.items()
            for key, value in gap.items()
            if isinstance(value, float)
        }
        mlflow.log_metrics(metrics)
        for path in [*out.values(), params.paths.report]:
            mlflow.log_artifact(str(path))
    log.info("compared %s:\n%s\n%s", ", ".join(histories), table, seeds_table)


if __name__ == "__main__":
    main()
