"""The one summary of a set of runs: grouped, each group and variant against a reference
group, and the variants against each other within each group.

`compare` (one experiment's runs, one group) and `ablation` (a grid of experiments) both
call `summarize`; pipeline/analysis/render.py turns its rows into Markdown, HTML and JSON.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.analysis.grouping import Group, group_runs, pick_reference
from pipeline.analysis.runs import RunResult
from pipeline.analysis.stats import (
    Difference,
    Spread,
    difference,
    finite_spread,
    fisher_p,
    spread,
)
from pipeline.cifar10.chance import at_chance


@dataclass(frozen=True)
class Comparison:
    """A group's variant against the reference group's same variant."""

    test_accuracy: Difference
    stuck_after_epoch_1_p: float
    stuck_at_end_p: float


@dataclass(frozen=True)
class VariantRow:
    """One group and variant: its seeds' test accuracy, how many stayed at chance, and its
    comparison with the reference (None for the reference itself, or where it lacks the
    variant)."""

    group: str
    variant: str
    runs: list[RunResult]
    test_accuracy: Spread
    best_val_accuracy: Spread
    stuck_after_epoch_1: int
    stuck_at_end: int
    first_layer_update_ratio: float
    reference: bool
    comparison: Comparison | None
    # of the validation accuracy per epoch, over the runs that left chance (n counts them)
    roughness: Spread

    @property
    def seeds(self) -> int:
        return len(self.runs)


@dataclass(frozen=True)
class VariantGap:
    """Within one group, a variant's test accuracy minus the baseline variant's."""

    group: str
    variant: str
    baseline: str
    seeds: tuple[int, int]
    test_accuracy: Difference


@dataclass(frozen=True)
class Summary:
    """Every row of a summary, and the groups they come from."""

    groups: list[Group]
    reference: Group
    rows: list[VariantRow]
    between_variants: list[VariantGap]


def summarize(
    runs: list[RunResult],
    reference: str | None = None,
    baseline_variant: str = "plain",
    variant_order: list[str] | None = None,
) -> Summary:
    """Group `runs`, compare each group with `reference` (default: the first group) variant
    by variant, and each variant with `baseline_variant` within each group. Variants come in
    `variant_order` where given, else sorted by name."""
    groups = group_runs(runs)
    chosen = pick_reference(groups, reference)
    rows = [
        _row(group, variant, chosen)
        for group in groups
        for variant in group.variants(variant_order)
    ]
    gaps = [
        gap for group in groups for gap in _variant_gaps(group, baseline_variant, variant_order)
    ]
    return Summary(groups, chosen, rows, gaps)


def _row(group: Group, variant: str, reference: Group) -> VariantRow:
    runs = group.runs_of(variant)
    baseline = reference.runs_of(variant)
    is_reference = group is reference
    comparison = None
    if baseline and not is_reference:
        comparison = Comparison(
            difference(
                [run.test_accuracy for run in runs], [run.test_accuracy for run in baseline]
            ),
            _fisher(runs, baseline, _first_epoch),
            _fisher(runs, baseline, _last_epoch),
        )
    return VariantRow(
        group=group.name,
        variant=variant,
        runs=runs,
        test_accuracy=spread([run.test_accuracy for run in runs]),
        best_val_accuracy=spread([run.best_val_accuracy for run in runs]),
        stuck_after_epoch_1=_stuck(runs, _first_epoch),
        stuck_at_end=_stuck(runs, _last_epoch),
        first_layer_update_ratio=_geometric_mean([run.first_layer_update for run in runs]),
        reference=is_reference,
        comparison=comparison,
        roughness=finite_spread([run.val_accuracy_roughness for run in runs]),
    )


def _variant_gaps(group: Group, baseline: str, order: list[str] | None) -> list[VariantGap]:
    """Each other variant of the group minus `baseline`, where the group holds it."""
    variants = group.variants(order)
    if baseline not in variants:
        return []
    base = [run.test_accuracy for run in group.runs_of(baseline)]
    gaps = []
    for variant in variants:
        if variant == baseline:
            continue
        values = [run.test_accuracy for run in group.runs_of(variant)]
        gaps.append(
            VariantGap(
                group.name, variant, baseline, (len(values), len(base)), difference(values, base)
            )
        )
    return gaps


def _first_epoch(run: RunResult) -> float:
    return run.val_accuracy_first


def _last_epoch(run: RunResult) -> float:
    return run.val_accuracy_last


def _stuck(runs: list[RunResult], accuracy: Callable[[RunResult], float]) -> int:
    return sum(at_chance(accuracy(run)) for run in runs)


def _fisher(
    runs: list[RunResult], baseline: list[RunResult], accuracy: Callable[[RunResult], float]
) -> float:
    """Fisher's exact test: stuck or not, this group against the reference."""
    return fisher_p(
        (_stuck(runs, accuracy), len(runs)), (_stuck(baseline, accuracy), len(baseline))
    )


def _geometric_mean(values: list[float]) -> float:
    """Update ratios span decades between runs: their geometric mean, NaN if any is missing."""
    finite = [value for value in values if math.isfinite(value) and value > 0]
    if len(finite) != len(values) or not finite:
        return math.nan
    return math.exp(statistics.fmean(math.log(value) for value in finite))
