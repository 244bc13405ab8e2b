"""Matplotlib figures, written atomically as PNG (no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

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


def curves_figure(histories: Mapping[str, History], metric: str, title: str) -> plt.Figure:
    """Training (solid) and validation (dashed) `metric` per epoch, one colour per run."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for (name, history), colour in zip(histories.items(), _colours(), strict=False):
        epochs = [row["epoch"] for row in history]
        axes.plot(epochs, [row[metric] for row in history], color=colour, label=f"{name} train")
        axes.plot(
            epochs,
            [row[f"val_{metric}"] for row in history],
            color=colour,
            linestyle="--",
            label=f"{name} validation",
        )
    axes.set(xlabel="epoch", ylabel=metric, title=title)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


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
