"""The loss landscape's smoothness per group and variant (Santurkar et al. 2018), from the
`landscape/<statistic>` measures a probed run keeps (`train.probe.landscape`).

Per run, each statistic is reduced to its geometric mean over the measured training steps
(they span decades over training); per group and variant, to the geometric mean over seeds.
Between variants, the ratio of those means, with a 95% Welch interval and the exact
permutation test on the log values: "bn / plain 0.3 [0.1, 0.9]" reads as a landscape three
times smoother with BN, resolved.

`relative_gradient_change` is ‖g(w + Δw) − g(w)‖ / ‖g(w)‖ at each step (the largest over the
step multiples, over the gradient's norm there): the gradient's change in units of itself. The
raw statistics are small wherever the gradient is small, as on a plateau at chance, so a run
that does not learn can look smooth by them; this one it cannot win by being flat.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from pipeline.analysis.render import Table, interval_or_none
from pipeline.analysis.runs import RunResult
from pipeline.analysis.stats import Difference, difference
from pipeline.analysis.summary import Summary

STATISTICS = ("loss_variation", "gradient_change", "beta_smoothness", "relative_gradient_change")


def run_smoothness(run: RunResult, from_step: int = 0) -> dict[str, float]:
    """Each statistic's geometric mean over the run's steps measured from `from_step` on; {}
    if none was."""
    landscape = {
        name: {step: value for step, value in values.items() if int(step) >= from_step}
        for name, values in run.landscape.items()
    }
    if not landscape.get("gradient_change"):
        return {}
    norms = landscape.get("gradient_norm", {})
    landscape["relative_gradient_change"] = {
        step: change / norms[step]
        for step, change in landscape["gradient_change"].items()
        if norms.get(step, 0) > 0
    }
    return {name: _geometric_mean(list(landscape.get(name, {}).values())) for name in STATISTICS}


def non_finite_measures(run: RunResult, from_step: int = 0) -> int:
    """The run's measured steps (from `from_step` on) with a NaN or infinite value: counted by
    the probe (`non_finite`), or, in records older than that count, seen in a statistic."""
    steps = {
        step
        for name, values in run.landscape.items()
        for step, value in values.items()
        if int(step) >= from_step
        and (not math.isfinite(value) or (name == "non_finite" and value > 0))
    }
    return len(steps)


def landscape_series(summary: Summary) -> dict[str, list[list[dict[str, float]]]]:
    """The probed runs' measures as `landscape_figure` draws them: per variant (per group and
    variant where there are several groups), one list of rows per seed."""
    series: dict[str, list[list[dict[str, float]]]] = {}
    # A legend names a group by its factors (`learning_rate=0.01`): its experiments' names
    # can fill the figure.
    labels = {
        group.name: ", ".join(
            f"{key.split('.')[-1]}={_short(value)}" for key, value in group.factors.items()
        )
        or group.name
        for group in summary.groups
    }
    for row in summary.rows:
        name = row.variant if len(summary.groups) == 1 else f"{labels[row.group]}: {row.variant}"
        for run in row.runs:
            steps = sorted(run.landscape.get("gradient_change", {}), key=int)
            if steps:
                rows = [
                    {"step": float(step), **{k: v[step] for k, v in run.landscape.items()}}
                    for step in steps
                ]
                series.setdefault(name, []).append(rows)
    return series


def _short(value: str) -> str:
    """A numeric setting to three significant digits (a half-decade rate is 0.00316...)."""
    try:
        return f"{float(value):.3g}"
    except ValueError:
        return value


@dataclass(frozen=True)
class SmoothnessRow:
    """One group and variant: its probed runs and each statistic's geometric mean over them."""

    group: str
    variant: str
    runs: int
    measures: int  # measured steps per run (the first run's)
    means: dict[str, float]
    non_finite: int  # measures with a NaN or infinite value, over the runs: not in the means


@dataclass(frozen=True)
class SmoothnessRatio:
    """Within one group, variant / baseline of one statistic: the ratio of geometric means, and
    the difference of mean log10 values it comes from (with its interval and p)."""

    group: str
    variant: str
    baseline: str
    statistic: str
    log10: Difference

    @property
    def ratio(self) -> float:
        return 10**self.log10.mean

    def cell(self) -> str:
        if self.log10.no_spread:
            return f"{self.ratio:.3g}, no interval (no spread)"
        if math.isnan(self.log10.low):
            n = self.log10.n
            return f"{self.ratio:.3g} (no interval: {n[0]} vs {n[1]} runs)"
        interval = f"{self.ratio:.3g} [{10**self.log10.low:.3g}, {10**self.log10.high:.3g}]"
        return f"{interval}, p {self.log10.permutation_p:.2g}"


@dataclass(frozen=True)
class RoughnessGap:
    """Within one group, variant − baseline of the validation-accuracy curve's roughness
    (`curve_roughness`, over the runs that left chance): the article's own words, smoother
    training curves."""

    group: str
    variant: str
    baseline: str
    roughness: Difference

    def sentence(self) -> str:
        p = self.roughness.permutation_p
        permutation = "" if math.isnan(p) else f"; exact permutation p = {p:.3g}"
        return (
            f"{self.group}: validation accuracy fall-back per epoch, {self.variant} − "
            f"{self.baseline}: {self.roughness.describe()}{permutation}"
        )


@dataclass(frozen=True)
class Smoothness:
    rows: list[SmoothnessRow]
    ratios: list[SmoothnessRatio]
    from_step: int = 0  # the training step the measures are read from
    roughness: list[RoughnessGap] = field(default_factory=list)


def smoothness(summary: Summary, baseline_variant: str = "plain", from_step: int = 0) -> Smoothness:
    """The smoothness rows and ratios of a summary's groups (empty where no run was probed),
    of the measures taken from training step `from_step` on."""
    rows, ratios = [], []
    for group in summary.groups:
        probed: dict[str, list[dict[str, float]]] = {}
        for row in summary.rows:
            if row.group != group.name:
                continue
            measured = [(run, run_smoothness(run, from_step)) for run in row.runs]
            measured = [(run, values) for run, values in measured if values]
            if not measured:
                continue
            probed[row.variant] = [values for _, values in measured]
            means = {
                name: _geometric_mean([values[name] for _, values in measured])
                for name in STATISTICS
            }
            steps = sum(
                int(step) >= from_step for step in measured[0][0].landscape["gradient_change"]
            )
            blown_up = sum(non_finite_measures(run, from_step) for run, _ in measured)
            rows.append(
                SmoothnessRow(group.name, row.variant, len(measured), steps, means, blown_up)
            )
        base = probed.get(baseline_variant)
        if not base:
            continue
        for variant, values in probed.items():
            if variant == baseline_variant:
                continue
            for name in STATISTICS:
                log_a = [math.log10(v[name]) for v in values if v[name] > 0]
                log_b = [math.log10(v[name]) for v in base if v[name] > 0]
                if log_a and log_b:
                    gap = difference(log_a, log_b)
                    ratios.append(SmoothnessRatio(group.name, variant, baseline_variant, name, gap))
    return Smoothness(rows, ratios, from_step, _roughness_gaps(summary, baseline_variant))


def _roughness_gaps(summary: Summary, baseline_variant: str) -> list[RoughnessGap]:
    gaps = []
    for group in summary.groups:
        curves = {
            row.variant: [
                run.val_accuracy_roughness
                for run in row.runs
                if math.isfinite(run.val_accuracy_roughness)
            ]
            for row in summary.rows
            if row.group == group.name
        }
        base = curves.get(baseline_variant)
        for variant, values in curves.items():
            if variant != baseline_variant and values and base:
                gaps.append(
                    RoughnessGap(group.name, variant, baseline_variant, difference(values, base))
                )
    return gaps


ROWS_NOTE = (
    "Loss landscape along training's steps (train.probe.landscape; Santurkar et al. 2018): "
    "per run the geometric mean over its measured steps, per row the geometric mean over its "
    "runs. Smaller is smoother; relative_gradient_change is the gradient change over the "
    "gradient's norm, which a run on a plateau cannot win by being flat. non-finite counts the "
    "measures (over the row's runs) where a step blew the loss or gradient up: left out of the "
    "means, which therefore read smoother than those steps were."
)
RATIOS_NOTE = (
    "Between variants: the ratio of the geometric means, with the 95% Welch interval of the "
    "mean log10 difference (below 1: smoother than the baseline variant) and p, the exact "
    "permutation test of that difference (with 3 runs against 3 it cannot go below 0.1)."
)


def smoothness_tables(result: Smoothness) -> list[tuple[str, Table]]:
    """The section's tables with the sentence that precedes each ([] where nothing was probed)."""
    if not result.rows:
        return []
    rows = Table(
        ("group", "variant", "probed runs", "measures per run", "non-finite", *STATISTICS),
        "llrrr" + "r" * len(STATISTICS),
        [
            (
                row.group,
                row.variant,
                str(row.runs),
                str(row.measures),
                str(row.non_finite),
                *(f"{row.means[name]:.3g}" for name in STATISTICS),
            )
            for row in result.rows
        ],
    )
    window = f" Measures from training step {result.from_step} on." if result.from_step else ""
    tables = [(ROWS_NOTE + window, rows)]
    cells = {(r.group, r.variant, r.baseline, r.statistic): r.cell() for r in result.ratios}
    pairs = sorted({(r.group, r.variant, r.baseline) for r in result.ratios})
    if pairs:
        ratios = Table(
            ("group", "ratio", *STATISTICS),
            "ll" + "r" * len(STATISTICS),
            [
                (
                    group,
                    f"{variant} / {baseline}",
                    *(cells.get((group, variant, baseline, name), "–") for name in STATISTICS),
                )
                for group, variant, baseline in pairs
            ],
        )
        tables.append((RATIOS_NOTE, ratios))
    return tables


def smoothness_markdown(result: Smoothness) -> str:
    """The section a summary's page gains when some of its runs were probed ("" otherwise)."""
    tables = smoothness_tables(result)
    if not tables:
        return ""
    page = "".join(f"{note}\n\n{table.markdown()}\n\n" for note, table in tables)
    page += "".join(f"- {gap.sentence()}\n" for gap in result.roughness)
    return page.rstrip("\n") + "\n"


def smoothness_json(result: Smoothness) -> dict[str, Any]:
    """The rows and ratios as JSON (a bound that does not exist is null)."""
    return {
        "from_step": result.from_step,
        "rows": [
            {
                "group": row.group,
                "variant": row.variant,
                "runs": row.runs,
                "measures": row.measures,
                "non_finite": row.non_finite,
                **row.means,
            }
            for row in result.rows
        ],
        "ratios": [
            {
                "group": ratio.group,
                "variant": ratio.variant,
                "baseline": ratio.baseline,
                "statistic": ratio.statistic,
                "ratio": ratio.ratio,
                "ci_low": interval_or_none(10**ratio.log10.low),
                "ci_high": interval_or_none(10**ratio.log10.high),
                "permutation_p": interval_or_none(ratio.log10.permutation_p),
                "runs": list(ratio.log10.n),
            }
            for ratio in result.ratios
        ],
        "roughness": [
            {
                "group": gap.group,
                "variant": gap.variant,
                "baseline": gap.baseline,
                "difference": gap.roughness.mean,
                "ci_low": interval_or_none(gap.roughness.low),
                "ci_high": interval_or_none(gap.roughness.high),
                "permutation_p": interval_or_none(gap.roughness.permutation_p),
                "runs": list(gap.roughness.n),
            }
            for gap in result.roughness
        ],
    }


def _geometric_mean(values: list[float]) -> float:
    positive = [value for value in values if math.isfinite(value) and value > 0]
    if not positive:
        return math.nan
    return 10 ** statistics.fmean(math.log10(value) for value in positive)
