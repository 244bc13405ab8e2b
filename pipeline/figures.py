"""Matplotlib figures, written atomically as PNG (no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: stages run under DVC, CI and on servers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pipeline.files import atomic_path  # noqa: E402

History = Sequence[Mapping[str, float]]


def save(figure: plt.Figure, target: Path) -> None:
    """Write a figure to PNG atomically and release its memory."""
    with atomic_path(target) as temporary:
        figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)


def curves_figure(
    histories: Mapping[str, Sequence[History]], metric: str, title: str
) -> plt.Figure:
    """Training (solid) and validation (dashed) `metric` per epoch, one colour per variant: the
    mean over the variant's seeds, shaded from the lowest to the highest seed."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for (name, runs), colour in zip(histories.items(), _colours(), strict=False):
        epochs = [row["epoch"] for row in runs[0]]
        seeds = f" ({len(runs)} seeds)" if len(runs) > 1 else ""
        for key, style, split in ((metric, "-", "train"), (f"val_{metric}", "--", "validation")):
            centre, low, high = seed_band([[row[key] for row in run] for run in runs])
            axes.plot(epochs, centre, style, color=colour, label=f"{name} {split}{seeds}")
            axes.fill_between(epochs, low, high, color=colour, alpha=0.15, linewidth=0)
    axes.set(xlabel="epoch", ylabel=metric, title=title)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def seed_band(
    series: Sequence[Sequence[float]], geometric: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point by point over seeds: the mean (geometric, for a log axis) and the min and max."""
    values = np.asarray(series, dtype=float)
    centre = np.exp(np.log(values).mean(axis=0)) if geometric else values.mean(axis=0)
    return centre, values.min(axis=0), values.max(axis=0)


def learning_curves_figure(name: str, history: History) -> plt.Figure:
    """Loss and accuracy of one run, side by side."""
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [row["epoch"] for row in history]
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.plot(epochs, [row[metric] for row in history], label="train")
        axes.plot(epochs, [row[f"val_{metric}"] for row in history], "--", label="validation")
        axes.set(xlabel="epoch", ylabel=metric, title=f"{name}: {metric}")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str], title: str) -> plt.Figure:
    """A confusion matrix with class names and counts."""
    figure, axes = plt.subplots(figsize=(7, 6))
    image = axes.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set(xlabel="predicted", ylabel="actual", title=title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(
            column,
            row,
            str(count),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if count > threshold else "black",
        )
    figure.colorbar(image, ax=axes)
    return figure


def _colours() -> list[str]:
    return [f"C{index}" for index in range(10)]


def layer_profile_figure(
    probes: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    field: str,
    title: str,
    log_scale: bool = False,
) -> plt.Figure:
    """`field` per layer, input to output, one colour per variant: first probed epoch dashed,
    last solid; the mean over the variant's seeds (geometric on a log scale), shaded from the
    lowest to the highest seed. Layers without the field (NaN) are left out."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    labels: dict[int, str] = {}
    for (name, runs), colour in zip(probes.items(), _colours(), strict=False):
        epochs = sorted({int(row["epoch"]) for row in runs[0]})
        for epoch, style in ((epochs[0], "--"), (epochs[-1], "-")) if epochs else ():
            per_seed = [
                {
                    int(row["depth"]): float(row[field])
                    for row in rows
                    if int(row["epoch"]) == epoch and np.isfinite(float(row[field]))
                }
                for rows in runs
            ]
            depths = sorted(set.intersection(*(set(values) for values in per_seed)))
            labels |= {
                int(r["depth"]): str(r["layer"]) for r in runs[0] if int(r["epoch"]) == epoch
            }
            centre, low, high = seed_band(
                [[values[depth] for depth in depths] for values in per_seed], geometric=log_scale
            )
            seeds = f", {len(runs)} seeds" if len(runs) > 1 else ""
            axes.plot(
                depths,
                centre,
                style,
                marker="o",
                color=colour,
                label=f"{name}, epoch {epoch}{seeds}",
            )
            axes.fill_between(depths, low, high, color=colour, alpha=0.12, linewidth=0)
    axes.set(xlabel="layer (input → output)", ylabel=field.replace("_", " "), title=title)
    if not labels:
        return _no_probes(figure, axes)
    axes.set_xticks(sorted(labels), [labels[depth] for depth in sorted(labels)])
    if log_scale:
        axes.set_yscale("log")
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    return figure


def _no_probes(figure: plt.Figure, axes: Any) -> plt.Figure:
    axes.text(0.5, 0.5, "no probes: train.probe.interval is 0", ha="center", va="center")
    return figure


def preactivation_figure(
    edges: np.ndarray,
    histograms: Mapping[str, Sequence[Mapping[int, Mapping[str, Sequence[int]]]]],
) -> plt.Figure:
    """Pre-activation histograms: a row per layer, the first and the last probed epoch side by
    side, one colour per variant (its seeds' histograms averaged); the sigmoid's flat tails
    (|z| > 4) are shaded."""
    layers = list(
        dict.fromkeys(
            layer
            for runs in histograms.values()
            for run in runs
            for h in run.values()
            for layer in h
        )
    )
    if not layers:
        figure, axes = plt.subplots(figsize=(6.4, 2))
        return _no_probes(figure, axes)
    figure, grid = plt.subplots(
        len(layers), 2, figsize=(9, 1.9 * len(layers)), sharex=True, squeeze=False
    )
    centres = (edges[:-1] + edges[1:]) / 2
    for column, pick in enumerate(("first", "last")):
        for row, layer in enumerate(layers):
            axes = grid[row][column]
            for (name, runs), colour in zip(histograms.items(), _colours(), strict=False):
                shares = []
                for run in runs:
                    if not run:
                        continue
                    epoch = min(run) if pick == "first" else max(run)
                    counts = np.asarray(run[epoch].get(layer, []), dtype=float)
                    if counts.sum():
                        shares.append(counts / counts.sum())
                if shares:
                    axes.step(
                        centres,
                        np.mean(shares, axis=0),
                        where="mid",
                        color=colour,
                        label=f"{name}, epoch {epoch}",
                    )
            for tail in ((edges[0], -4.0), (4.0, edges[-1])):
                axes.axvspan(*tail, color="grey", alpha=0.15, linewidth=0)
            axes.set_ylabel(layer)
            axes.legend(fontsize=7, loc="upper right")
            if row == 0:
                axes.set_title(f"{pick} probed epoch")
    for axes in grid[-1]:
        axes.set_xlabel("pre-activation z (shaded: |z| > 4, sigmoid saturated)")
    figure.tight_layout()
    return figure
