"""The comparison as one self-contained HTML file: tables and figures, no server needed."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from pipeline.analysis.render import Table
from pipeline.common.files import write_text

FIGURES = (
    ("accuracy_png", "Accuracy per epoch (solid training, dashed validation)"),
    ("loss_png", "Loss per epoch (solid training, dashed validation)"),
    (
        "updates_png",
        "Update-to-weight ratio ‖ΔW‖/‖W‖ per layer in the first optimizer step of the probed "
        "epoch, input to output (log scale; dashed first probed epoch, solid last): how much "
        "each layer actually learns per step, comparable across variants.",
    ),
    (
        "gradients_png",
        "Gradient norm per layer, input to output (log scale; dashed first probed epoch, solid "
        "last): a picture within each variant. Across variants it does not compare like with "
        "like: BatchNormalization rescales the gradients and RMSprop divides them by their "
        "running size.",
    ),
    (
        "derivatives_png",
        "Mean derivative of each activation at its input: sigmoid' peaks at 0.25 at z = 0 and "
        "falls towards 0 in the tails.",
    ),
    (
        "landscape_png",
        "The loss landscape along training's own steps (Santurkar et al. 2018), measured on the "
        "probe batch every train.probe.landscape.every_steps steps: the range of the loss over "
        "steps of a quarter to four times the real one, the largest change of the gradient, "
        "and the largest gradient change per unit of distance moved (effective β-smoothness). "
        "Lower is smoother.",
    ),
    (
        "preactivations_png",
        "Distribution of each activation's input z at the first and last probed epoch; shaded: "
        "|z| > 4, where the sigmoid is flat.",
    ),
)


def figures_note(seeds: list[int]) -> str:
    """What the figures' lines stand for."""
    if len(seeds) == 1:
        return f"Each variant's run with seed {seeds[0]}."
    listed = ", ".join(str(seed) for seed in seeds)
    return (
        f"Each variant's mean over its runs with seeds {listed} (gradient norms: geometric "
        "mean), shaded from the lowest to the highest seed; histograms averaged over seeds."
    )


def write_report(
    target: Path,
    runs: Table,
    seeds: Table,
    differences: list[str],
    figures: dict[str, Path],
    seed_list: list[int],
    smoothness: list[tuple[str, Table]] | None = None,
) -> None:
    """Write the report: the tables, the differences, then each figure embedded as base64."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Batch normalization on CIFAR-10: variants compared</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;"
        "text-align:right}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%}</style></head><body>",
        "<h1>Batch normalization on CIFAR-10: variants compared</h1>",
        "<h2>Every run</h2>",
        runs.html(),
        "<h2>Across seeds</h2>",
        seeds.html(),
        *(f"<p>{html.escape(line)}</p>" for line in differences),
    ]
    if smoothness:
        parts.append("<h2>Smoothness</h2>")
        for note, table in smoothness:
            parts += [f"<p>{html.escape(note)}</p>", table.html()]
    parts += [
        f"<h2>Figures</h2><p>{html.escape(figures_note(seed_list))}</p>",
    ]
    for key, caption in FIGURES:
        encoded = base64.b64encode(figures[key].read_bytes()).decode("ascii")
        parts.append(
            f'<figure><img alt="{html.escape(key)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts.append("</body></html>")
    write_text(target, "\n".join(parts) + "\n")
