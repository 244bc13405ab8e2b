"""A sweep: groups that differ in one numeric setting (the learning rate), per variant.

Which values each variant tolerates (its runs leave chance and none diverges), and test
accuracy against the value, as a table and a figure. Whether a run leaves chance is binary:
its share gets an exact (Clopper–Pearson) interval, and each value's variants are compared by
Fisher's exact test, Holm-adjusted over the values of the sweep. Where some seeds stay at
chance and others learn, the accuracies are bimodal and a t interval of their mean would
reach outside [0, 1]: such a point gets none, and the table gives the learners' values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
from scipy import stats

from pipeline.analysis.render import Table
from pipeline.analysis.stats import (
    CONFIDENCE,
    Spread,
    finite_spread,
    fisher_p,
    holm,
    proportion_interval,
    spread,
)
from pipeline.analysis.summary import Summary
from pipeline.cifar10.chance import at_chance
from pipeline.common.errors import PipelineError


@dataclass(frozen=True)
class SweepPoint:
    """One value of the swept setting and one variant."""

    variant: str
    value: float
    experiments: list[str]
    test_accuracy: Spread
    accuracies: list[float]  # each seed's run
    low: float  # the 95% t interval of the mean over seeds (NaN for one seed, or mixed)
    high: float
    left_chance: int  # runs whose last validation accuracy is above chance
    learned: list[float]  # the test accuracies of those runs
    failed: int | None  # training runs of the same experiments that failed; None: not known
    roughness: Spread

    @property
    def mixed(self) -> bool:
        """Some seeds left chance and some did not: bimodal accuracies."""
        return 0 < self.left_chance < self.test_accuracy.n

    @property
    def left_chance_interval(self) -> tuple[float, float]:
        """The exact 95% interval of the share of runs that leave chance."""
        return proportion_interval(self.left_chance, self.runs)

    @property
    def runs(self) -> int:
        """The runs that count: finished ones, and failed ones where they are known."""
        return self.test_accuracy.n + (self.failed or 0)

    @property
    def tolerated(self) -> str:
        """yes: every run left chance and none failed; no: none left chance; else partly."""
        total = self.runs
        if self.left_chance == total:
            return "yes"
        return "no" if self.left_chance == 0 else f"partly ({self.left_chance}/{total})"


def sweep_points(
    summary: Summary, key: str, failed: dict[tuple[str, str], int] | None = None
) -> list[SweepPoint]:
    """A point per group and variant, ordered by variant then value; `failed` counts the
    failed training runs per (DVC experiment, variant), None where they are not known."""
    points = []
    for group in summary.groups:
        others = {name: value for name, value in group.factors.items() if name != key}
        if key not in group.factors:
            raise PipelineError(
                f"--sweep {key}: the runs do not differ in {key}; the factors are "
                f"{', '.join(group.factors) or 'none'}"
            )
        if others and len({tuple(g.factors.get(n) for n in others) for g in summary.groups}) > 1:
            raise PipelineError(
                f"--sweep {key}: the groups also differ in {', '.join(sorted(others))}; choose "
                "the runs of one sweep with --experiments or --filter"
            )
        for variant in group.variants():
            runs = group.runs_of(variant)
            accuracy = spread([run.test_accuracy for run in runs])
            learners = [run for run in runs if not at_chance(run.val_accuracy_last)]
            low = high = math.nan
            if accuracy.n > 1 and accuracy.std > 0 and len(learners) in (0, len(runs)):
                half = stats.t.ppf((1 + CONFIDENCE) / 2, accuracy.n - 1) * accuracy.std
                low, high = (
                    accuracy.mean - half / math.sqrt(accuracy.n),
                    accuracy.mean + half / math.sqrt(accuracy.n),
                )
            points.append(
                SweepPoint(
                    variant=variant,
                    value=float(group.factors[key]),
                    experiments=group.experiments,
                    test_accuracy=accuracy,
                    accuracies=[run.test_accuracy for run in runs],
                    low=low,
                    high=high,
                    left_chance=len(learners),
                    learned=[run.test_accuracy for run in learners],
                    failed=None
                    if failed is None
                    else sum(failed.get((name, variant), 0) for name in group.experiments),
                    roughness=finite_spread([run.val_accuracy_roughness for run in runs]),
                )
            )
    return sorted(points, key=lambda point: (point.variant, point.value))


def sweep_table(points: list[SweepPoint], key: str) -> Table:
    """Per variant and value: seeds, test accuracy with its interval, what it tolerates."""
    rows = []
    for point in points:
        accuracy = f"{point.test_accuracy.mean:.4f} ± {point.test_accuracy.std:.4f}"
        if point.mixed:
            learned = ", ".join(f"{value:.4f}" for value in point.learned)
            accuracy += f" (mixed; learners: {learned})"
        elif math.isfinite(point.low):
            accuracy += f" [{point.low:.4f}, {point.high:.4f}]"
        else:
            accuracy += " (no interval)"
        roughness = (
            f"{point.roughness.mean:.4f} ({point.roughness.n})" if point.roughness.n else "–"
        )
        low, high = point.left_chance_interval
        rows.append(
            (
                point.variant,
                f"{point.value:.3g}",
                str(point.test_accuracy.n),
                accuracy,
                f"{point.left_chance}/{point.runs} [{low:.2f}, {high:.2f}]",
                "–" if point.failed is None else str(point.failed),
                point.tolerated,
                roughness,
            )
        )
    return Table(
        (
            "variant",
            key,
            "seeds",
            "test acc (mean ± std [95% CI of the mean])",
            "left chance [95% exact CI]",
            "failed",
            "tolerated",
            "val acc fall-back per epoch (runs)",
        ),
        "lrrrrrlr",
        rows,
    )


@dataclass(frozen=True)
class LeftChanceTest:
    """At one value: how many runs of a variant and of the baseline left chance, Fisher's
    exact p of the difference, and that p Holm-adjusted over the sweep's values."""

    value: float
    variant: str
    baseline: str
    left: tuple[int, int]  # (left chance, runs) of the variant
    baseline_left: tuple[int, int]
    p: float
    holm_p: float


def left_chance_tests(points: list[SweepPoint], baseline: str) -> list[LeftChanceTest]:
    """Each value's variants against `baseline` on leaving chance: Fisher's exact test, Holm
    over the family of every such test of the sweep."""
    by_key = {(point.variant, point.value): point for point in points}
    pairs = [
        (point, by_key[(baseline, point.value)])
        for point in points
        if point.variant != baseline and (baseline, point.value) in by_key
    ]

    def counts(point: SweepPoint) -> tuple[int, int]:
        return point.left_chance, point.runs

    # fisher_p takes (stuck, runs); the test is the same on (left, runs).
    ps = [fisher_p(counts(point), counts(other)) for point, other in pairs]
    return [
        LeftChanceTest(point.value, point.variant, baseline, counts(point), counts(other), p, h)
        for (point, other), p, h in zip(pairs, ps, holm(ps), strict=True)
    ]


def left_chance_table(tests: list[LeftChanceTest], key: str) -> Table:
    """The tests as a table: counts, Fisher's p, Holm's p."""
    rows = [
        (
            f"{test.value:.3g}",
            f"{test.variant} {test.left[0]}/{test.left[1]}",
            f"{test.baseline} {test.baseline_left[0]}/{test.baseline_left[1]}",
            f"{test.p:.3g}",
            f"{test.holm_p:.3g}",
        )
        for test in tests
    ]
    return Table(
        (key, "left chance", "against", "Fisher's exact p", f"Holm p (of {len(tests)})"),
        "lllrr",
        rows,
    )


def sweep_figure(points: list[SweepPoint], key: str) -> plt.Figure:
    """Test accuracy against the swept value per variant: the mean over seeds with its 95%
    interval shaded (none where seeds split between chance and learning), each seed's run a
    dot, chance dotted. The band is clipped to the accuracies that exist, 0 to 1."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    variants = list(dict.fromkeys(point.variant for point in points))
    for variant, colour in zip(variants, [f"C{index}" for index in range(10)], strict=False):
        mine = [point for point in points if point.variant == variant]
        values = [point.value for point in mine]
        axes.plot(values, [p.test_accuracy.mean for p in mine], "-o", color=colour, label=variant)
        axes.fill_between(
            values,
            [max(0.0, p.low) if math.isfinite(p.low) else p.test_accuracy.mean for p in mine],
            [min(1.0, p.high) if math.isfinite(p.high) else p.test_accuracy.mean for p in mine],
            color=colour,
            alpha=0.15,
            linewidth=0,
        )
        xs = [p.value for p in mine for _ in p.accuracies]
        ys = [accuracy for p in mine for accuracy in p.accuracies]
        axes.scatter(xs, ys, color=colour, s=12, alpha=0.6, linewidths=0)
    axes.axhline(0.1, color="grey", linestyle=":", label="chance")
    axes.set(
        xlabel=key,
        ylabel="test accuracy (band: 95% CI of the mean, within 0–1)",
        title=f"Test accuracy against {key}",
    )
    axes.set_xscale("log")
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    return figure
