"""Stage `compare`: the article's figures with every variant overlaid, and a summary table."""

from __future__ import annotations

import argparse
import csv
import logging
import math
from pathlib import Path
from typing import Any

import mlflow

from pipeline import tracking
from pipeline.cli import run_stage, stage_parser
from pipeline.figures import curves_figure, layer_profile_figure, preactivation_figure, save
from pipeline.files import atomic_path, read_json, write_json, write_text
from pipeline.history import History, read_history
from pipeline.layout import variant_files
from pipeline.params import PathsParams, load_params
from pipeline.probes import ProbeRow, read_preactivations, read_probes

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
        "layers": folder / "layers.csv",
        "gradients_png": folder / "gradient_norms.png",
        "derivatives_png": folder / "activation_derivatives.png",
        "preactivations_png": folder / "preactivations.png",
    }


def summary_rows(
    histories: dict[str, History], train: dict[str, Any], test: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per variant: best/final validation accuracy, test accuracy, epochs, seconds."""
    return [
        {
            "variant": name,
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


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table."""
    lines = [
        "| variant | learning rate | best val acc | final val acc | test acc | epochs "
        "| wall s | img/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {row['variant']} | {row['learning_rate']:.2g} | {row['best_val_accuracy']:.4f} "
        f"| {row['final_val_accuracy']:.4f} | {row['test_accuracy']:.4f} | {row['epochs']} "
        f"| {row['wall_seconds']:.0f} | {row['images_per_second']:.0f} |"
        for row in rows
    ]
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


def write_csv(target: Path, fields: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """Rows as CSV, atomically."""
    with atomic_path(target) as temporary, temporary.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    """Entry point of `python -m pipeline.compare`."""
    run_stage(_run, stage_parser(__doc__).parse_args())


def _run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    files = {name: variant_files(params.paths, name) for name in params.variants}
    histories = {name: read_history(f.history) for name, f in files.items()}
    train = {name: read_json(f.train_metrics) for name, f in files.items()}
    test = {name: read_json(f.test_metrics) for name, f in files.items()}
    runs = {name: read_json(f.run)["run_id"] for name, f in files.items()}

    out = comparison_files(params.paths)
    rows = summary_rows(histories, train, test)
    write_csv(out["curves"], CURVE_FIELDS, long_curves(histories))
    save(curves_figure(histories, "loss", "Loss per epoch"), out["loss_png"])
    save(curves_figure(histories, "accuracy", "Accuracy per epoch"), out["accuracy_png"])
    probes = {name: read_probes(f.probes) for name, f in files.items()}
    write_csv(out["layers"], LAYER_FIELDS, first_and_last_epochs(probes))
    save(
        layer_profile_figure(probes, "grad_norm", "Gradient norm per layer", log_scale=True),
        out["gradients_png"],
    )
    save(
        layer_profile_figure(probes, "mean_derivative", "Mean activation derivative per layer"),
        out["derivatives_png"],
    )
    preactivations = {name: read_preactivations(f.preactivations) for name, f in files.items()}
    edges = next(iter(preactivations.values()))[0]
    histograms = {name: run for name, (_, run) in preactivations.items()}
    save(preactivation_figure(edges, histograms), out["preactivations_png"])
    table = markdown_table(rows)
    write_text(out["summary_md"], "# Variants compared\n\n" + table)
    write_json(out["summary_json"], {row["variant"]: row for row in rows})

    experiment_id = tracking.connect(params.mlflow.experiment)
    tags = {**tracking.source_tags(), **{f"run.{name}": run_id for name, run_id in runs.items()}}
    with (
        mlflow.start_run(experiment_id=experiment_id, run_name="compare", tags=tags),
        tracking.killed_on_interrupt(),
    ):
        for row in rows:
            mlflow.log_metrics(
                {
                    f"{row['variant']}.{key}": float(value)
                    for key, value in row.items()
                    if key != "variant"
                }
            )
        for path in out.values():
            mlflow.log_artifact(str(path))
    log.info("compared %s:\n%s", ", ".join(histories), table)


if __name__ == "__main__":
    main()
