"""Writing matplotlib figures as PNG, headless and atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages run under DVC, CI and on servers

import matplotlib.pyplot as plt  # noqa: E402

from pipeline.common.files import atomic_path  # noqa: E402


def save(figure: plt.Figure, target: Path) -> None:
    """Write a figure to PNG atomically and release its memory."""
    with atomic_path(target) as temporary:
        figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
