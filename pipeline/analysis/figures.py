"""Figures of several runs: every variant overlaid, each the mean over its seeds with a band."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, MaxNLocator

from pipeline.analysis.grouping import Group

History = Sequence[Mapping[str, float]]


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
    # A seed at 0 (a layer that did not move, say) makes the geometric mean 0, as it should;
    # log(0) = -inf is that, not an error to print.
    with np.errstate(divide="ignore"):
        centre = np.exp(np.log(values).mean(axis=0)) if geometric else values.mean(axis=0)
    return centre, values.min(axis=0), values.max(axis=0)


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


def _relative_gradient_change(row: Mapping[str, float]) -> float:
    norm = row["gradient_norm"]
    return row["gradient_change"] / norm if norm > 0 else math.nan


LANDSCAPE_PANELS: tuple[tuple[str, Callable[[Mapping[str, float]], float]], ...] = (
    ("loss variation along the step", lambda row: row["loss_variation"]),
    ("gradient change ‖Δ∇L‖", lambda row: row["gradient_change"]),
    ("effective β-smoothness", lambda row: row["beta_smoothness"]),
    # The gradient's change in units of itself: a flat plateau cannot look smooth by it.
    ("relative gradient change ‖Δ∇L‖ / ‖∇L‖", _relative_gradient_change),
)


def landscape_figure(runs: Mapping[str, Sequence[Sequence[Mapping[str, float]]]]) -> plt.Figure:
    """Santurkar et al.'s three measures, and the gradient change relative to the gradient,
    against the training step, one colour per variant: the geometric mean over its seeds
    (steps all seeds measured), shaded from the lowest to the highest seed; log scale."""
    figure, grid = plt.subplots(1, len(LANDSCAPE_PANELS), figsize=(16, 3.8))
    drawn = False
    for axes, (title, measure) in zip(grid, LANDSCAPE_PANELS, strict=True):
        for (name, seeds), colour in zip(runs.items(), _colours(), strict=False):
            per_seed = [
                {row["step"]: value for row in rows if (value := measure(row)) > 0}
                for rows in seeds
            ]
            steps = (
                sorted(set.intersection(*(set(values) for values in per_seed))) if per_seed else []
            )
            if not steps:
                continue
            centre, low, high = seed_band(
                [[values[step] for step in steps] for values in per_seed], geometric=True
            )
            label = f"{name}" + (f" ({len(seeds)} seeds)" if len(seeds) > 1 else "")
            axes.plot(steps, centre, color=colour, label=label)
            axes.fill_between(steps, low, high, color=colour, alpha=0.15, linewidth=0)
            drawn = True
        axes.xaxis.set_major_formatter(FuncFormatter(lambda step, _: f"{step / 1000:g}k"))
        axes.set(xlabel="training step", title=title)
        axes.set_yscale("log")
        axes.grid(alpha=0.3, which="both")
    if not drawn:
        for axes in grid:
            axes.cla()
            axes.axis("off")
        grid[1].text(0.5, 0.5, "no landscape: train.probe.landscape.every_steps is 0", ha="center")
        return figure
    figure.tight_layout()
    # Below the panels, not over the first: a sweep draws ten series.
    named = {
        label: handle
        for axes in grid
        for handle, label in zip(*axes.get_legend_handles_labels(), strict=True)
    }
    figure.legend(
        named.values(),
        named.keys(),
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(len(named), 4),
        frameon=False,
    )
    return figure
