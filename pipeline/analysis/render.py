"""Renderings of a Summary's rows: tables as Markdown or HTML, and plain JSON."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.analysis.stats import Difference
from pipeline.analysis.summary import Summary, VariantGap, VariantRow


@dataclass(frozen=True)
class Table:
    """A table of text cells; `align` has one letter per column, l(eft) or r(ight)."""

    header: tuple[str, ...]
    align: str
    rows: Sequence[tuple[str, ...]]

    def markdown(self) -> str:
        """A pipe table, without a trailing newline."""
        rule = "|" + "|".join("---:" if side == "r" else "---" for side in self.align) + "|"
        lines = [_pipe_row(self.header), rule, *(_pipe_row(row) for row in self.rows)]
        return "\n".join(lines)

    def html(self) -> str:
        """An HTML table (cells escaped)."""
        header = "".join(f"<th>{html.escape(cell)}</th>" for cell in self.header)
        body = [
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
            for row in self.rows
        ]
        return "\n".join([f"<table><tr>{header}</tr>", *body, "</table>"])


def _pipe_row(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"


def interval_or_none(value: float) -> float | None:
    """JSON has no NaN: a bound that does not exist is null."""
    return None if math.isnan(value) else value


def difference_cell(gap: Difference) -> str:
    """A difference and its interval, compactly, for a table cell."""
    if gap.no_spread:
        return f"{gap.mean:+.4f}, no interval (no spread)"
    if math.isnan(gap.low):
        return f"{gap.mean:+.4f} (one seed)"
    return f"{gap.mean:+.4f} [{gap.low:+.4f}, {gap.high:+.4f}]"


def permutation_cell(gap: Difference | None) -> str:
    """The exact permutation test's p, or a dash where nothing is compared."""
    if gap is None or math.isnan(gap.permutation_p):
        return "–"
    return f"{gap.permutation_p:.3g}"


def multiplicity_note(comparisons: int) -> str:
    """What reading several tests at once means for their p values and intervals."""
    return (
        f"These tables read {comparisons} comparisons at once: at a 5% level about "
        f"{comparisons / 20:.1f} of them would look resolved by chance alone, and neither the "
        "intervals nor the p values are adjusted for that, so a single p near 0.05 is weak "
        "evidence. An interval that includes 0 is a difference not resolved, not no difference."
    )


def _row_difference_cell(row: VariantRow) -> str:
    if row.reference:
        return "reference"
    if row.comparison is None:
        return "no reference runs"
    return difference_cell(row.comparison.test_accuracy)


def _p(value: float | None) -> str:
    return "" if value is None else f" ({value:.3g})"


def groups_table(summary: Summary) -> Table:
    """One row per group and variant, against the reference group."""
    rows = []
    for row in summary.rows:
        compared = row.comparison
        rows.append(
            (
                row.group,
                row.variant,
                str(row.seeds),
                f"{row.test_accuracy.mean:.4f} ± {row.test_accuracy.std:.4f}",
                _row_difference_cell(row),
                permutation_cell(compared.test_accuracy if compared else None),
                f"{row.stuck_after_epoch_1}/{row.seeds}"
                + _p(compared.stuck_after_epoch_1_p if compared else None),
                f"{row.stuck_at_end}/{row.seeds}"
                + _p(compared.stuck_at_end_p if compared else None),
                f"{row.first_layer_update_ratio:.2e}",
            )
        )
    return Table(
        (
            "group",
            "variant",
            "seeds",
            "test acc (mean ± std)",
            "difference, 95% CI",
            "permutation p",
            "stuck after epoch 1 (p)",
            "stuck at end (p)",
            "conv1 update ratio",
        ),
        "llrrrrrrr",
        rows,
    )


def between_variants_table(gaps: list[VariantGap]) -> Table:
    """Within each group, each variant against the baseline variant."""
    return Table(
        ("group", "difference", "seeds", "test acc difference, 95% CI", "permutation p"),
        "llrrr",
        [
            (
                gap.group,
                f"{gap.variant} − {gap.baseline}",
                f"{gap.seeds[0]} vs {gap.seeds[1]}",
                difference_cell(gap.test_accuracy),
                permutation_cell(gap.test_accuracy),
            )
            for gap in gaps
        ],
    )


def grid_markdown(summary: Summary) -> str:
    """The ablation's page: the table, the variants' differences within each group, then each
    group's factors."""
    lines = [
        f"Reference: {summary.reference.name}. Difference: test accuracy minus the reference's, "
        "with its 95% Welch interval; permutation p: the exact permutation test of the same "
        "difference (every relabelling of the runs; exact where Welch's degrees of freedom "
        "fall near 1 with a few seeds or very unequal spreads). Stuck: validation accuracy ≤ "
        "0.11 (chance is 0.10); p: Fisher's exact test against the reference; update ratio: "
        "‖ΔW‖/‖W‖ of conv1 in epoch 1's first step, geometric mean over seeds.",
        "",
        groups_table(summary).markdown(),
    ]
    if summary.between_variants:
        lines += [
            "",
            "Between variants, within each group (Welch 95% CI):",
            "",
            between_variants_table(summary.between_variants).markdown(),
        ]
    comparisons = sum(row.comparison is not None for row in summary.rows)
    comparisons += len(summary.between_variants)
    if comparisons > 1:
        lines += ["", multiplicity_note(comparisons)]
    lines += ["", "Groups:", ""]
    lines += [
        f"- {group.name}: "
        + (", ".join(f"`{key}={value}`" for key, value in group.factors.items()) or "one group")
        for group in summary.groups
    ]
    return "\n".join(lines) + "\n"


def row_json(row: VariantRow) -> dict[str, Any]:
    """A group-and-variant row as JSON."""
    payload: dict[str, Any] = {
        "group": row.group,
        "variant": row.variant,
        "seeds": row.seeds,
        "test_accuracy_mean": row.test_accuracy.mean,
        "test_accuracy_std": row.test_accuracy.std,
        "stuck_after_epoch_1": row.stuck_after_epoch_1,
        "stuck_at_end": row.stuck_at_end,
        "first_layer_update_ratio": row.first_layer_update_ratio,
        "runs": {run.seed: run.run_id for run in row.runs},
        "git_commits": sorted({run.git_commit for run in row.runs if run.git_commit}),
        "reference": row.reference,
        "val_accuracy_roughness_mean": interval_or_none(row.roughness.mean),
        "val_accuracy_roughness_runs": row.roughness.n,
    }
    if row.comparison is not None:
        gap = row.comparison.test_accuracy
        payload |= {
            "difference": gap.mean,
            "ci_low": interval_or_none(gap.low),
            "ci_high": interval_or_none(gap.high),
            "no_spread": gap.no_spread,
            "permutation_p": interval_or_none(gap.permutation_p),
            "stuck_after_epoch_1_p": row.comparison.stuck_after_epoch_1_p,
            "stuck_at_end_p": row.comparison.stuck_at_end_p,
        }
    return payload


def gap_json(gap: VariantGap) -> dict[str, Any]:
    """A between-variants difference as JSON."""
    return {
        "group": gap.group,
        "variant": gap.variant,
        "baseline": gap.baseline,
        "seeds": list(gap.seeds),
        "difference": gap.test_accuracy.mean,
        "ci_low": interval_or_none(gap.test_accuracy.low),
        "ci_high": interval_or_none(gap.test_accuracy.high),
        "no_spread": gap.test_accuracy.no_spread,
        "permutation_p": interval_or_none(gap.test_accuracy.permutation_p),
    }


def grid_json(summary: Summary) -> dict[str, Any]:
    """The ablation's summary as JSON: its groups, rows and between-variant differences."""
    return {
        "reference": summary.reference.name,
        "groups": [
            {"name": group.name, "experiments": group.experiments, "factors": group.factors}
            for group in summary.groups
        ],
        "rows": [row_json(row) for row in summary.rows],
        "between_variants": [gap_json(gap) for gap in summary.between_variants],
    }
