"""The comparison as one self-contained HTML file: tables and figures, no server needed."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from pipeline.files import write_text

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
    target: Path, runs_table: str, seeds_table: str, figures: dict[str, Path], seeds: list[int]
) -> None:
    """Write the report: the Markdown tables as HTML, then each figure embedded as base64."""
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
        markdown_to_html(runs_table),
        "<h2>Across seeds</h2>",
        markdown_to_html(seeds_table),
        f"<h2>Figures</h2><p>{html.escape(figures_note(seeds))}</p>",
    ]
    for key, caption in FIGURES:
        encoded = base64.b64encode(figures[key].read_bytes()).decode("ascii")
        parts.append(
            f'<figure><img alt="{html.escape(key)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts.append("</body></html>")
    write_text(target, "\n".join(parts) + "\n")


def markdown_to_html(markdown: str) -> str:
    """The pipe tables and `- ` bullet lines that `compare` writes, as HTML."""
    out: list[str] = []
    table: list[list[str]] = []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if not all(set(cell) <= set("-:") for cell in cells):  # skip the |---| rule
                table.append(cells)
            continue
        if table:
            header, *body = table
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header))
            out += [
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                for row in body
            ]
            out.append("</table>")
            table = []
        if line.startswith("- "):
            out.append(f"<p>{html.escape(line[2:])}</p>")
    return "\n".join(out)
