"""The smoothness summary of the landscape probe's measures: geometric means per run and
variant, and bn / plain ratios with Welch intervals on the log values."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from pipeline.analysis.figures import landscape_figure
from pipeline.analysis.runs import RunResult, read_runs, write_runs
from pipeline.analysis.smoothness import (
    STATISTICS,
    landscape_series,
    run_smoothness,
    smoothness,
    smoothness_json,
    smoothness_markdown,
)
from pipeline.analysis.summary import summarize
from pipeline.records.figures import save


def probed(variant: str, seed: int, scale: float, steps: int = 3) -> RunResult:
    """A run whose landscape measures grow along training and scale with `scale`."""
    landscape = {
        "loss_variation": {str(500 * i): scale * (1 + i) for i in range(steps)},
        "gradient_change": {str(500 * i): scale * (2 + i) for i in range(steps)},
        "beta_smoothness": {str(500 * i): scale * (3 + i) * 10 for i in range(steps)},
        "gradient_norm": {str(500 * i): 4.0 + i for i in range(steps)},
    }
    return RunResult(
        run_id=f"{variant}{seed}",
        experiment="lr-1e-3",
        variant=variant,
        seed=str(seed),
        params={"train.batch_norm": str(variant == "bn")},
        test_accuracy=0.6,
        val_accuracy_first=0.3,
        val_accuracy_last=0.6,
        first_layer_update=1e-3,
        landscape=landscape,
    )


def test_a_run_is_reduced_to_geometric_means_over_its_measured_steps() -> None:
    run = probed("bn", 1, 0.5)
    values = run_smoothness(run)
    assert set(values) == set(STATISTICS)
    assert values["loss_variation"] == pytest.approx(stats.gmean([0.5, 1.0, 1.5]))
    relative = [0.5 * (2 + i) / (4.0 + i) for i in range(3)]
    assert values["relative_gradient_change"] == pytest.approx(stats.gmean(relative))
    unprobed = RunResult("x", "", "bn", "1", {}, 0.6, 0.3, 0.6, 1e-3)
    assert run_smoothness(unprobed) == {}


def test_bn_over_plain_is_the_ratio_of_geometric_means_with_welchs_interval() -> None:
    bn_scales, plain_scales = [0.2, 0.25, 0.3], [1.0, 1.5, 0.8]
    runs = [probed("bn", seed, scale) for seed, scale in enumerate(bn_scales)]
    runs += [probed("plain", seed, scale) for seed, scale in enumerate(plain_scales)]
    result = smoothness(summarize(runs))
    assert {(row.variant, row.runs, row.measures) for row in result.rows} == {
        ("bn", 3, 3),
        ("plain", 3, 3),
    }
    ratio = next(r for r in result.ratios if r.statistic == "beta_smoothness")
    bn = [math.log10(run_smoothness(run)["beta_smoothness"]) for run in runs[:3]]
    plain = [math.log10(run_smoothness(run)["beta_smoothness"]) for run in runs[3:]]
    welch = stats.ttest_ind(bn, plain, equal_var=False).confidence_interval()
    assert ratio.ratio == pytest.approx(10 ** (np.mean(bn) - np.mean(plain)))
    assert ratio.ratio == pytest.approx(stats.gmean(bn_scales) / stats.gmean(plain_scales))
    assert (10**ratio.log10.low, 10**ratio.log10.high) == pytest.approx(
        (10**welch.low, 10**welch.high)
    )
    assert ratio.log10.resolved() and ratio.ratio < 1
    page = smoothness_markdown(result)
    assert f"| lr-1e-3 | bn / plain | {ratio.ratio:.3g} [" in page
    # Every bn run is smoother than every plain run: the smallest p 3 against 3 allows, shown.
    assert ratio.log10.permutation_p == pytest.approx(0.1)
    assert f"{10**ratio.log10.high:.3g}], p 0.1 |" in page
    record = smoothness_json(result)
    assert {r["statistic"] for r in record["ratios"]} == set(STATISTICS)


def test_one_run_a_side_has_no_interval_and_unprobed_runs_add_no_section() -> None:
    result = smoothness(summarize([probed("bn", 1, 0.2), probed("plain", 1, 1.0)]))
    assert all(math.isnan(ratio.log10.low) for ratio in result.ratios)
    assert "(no interval: 1 vs 1 runs)" in smoothness_markdown(result)
    bare = RunResult("x", "", "bn", "1", {}, 0.6, 0.3, 0.6, 1e-3)
    assert smoothness_markdown(smoothness(summarize([bare]))) == ""


def test_the_measures_survive_the_runs_records(tmp_path: Path) -> None:
    runs = [probed("bn", 1, 0.2), probed("plain", 1, 1.0)]
    write_runs(tmp_path / "part.runs.json", runs)
    assert read_runs(tmp_path / "part.runs.json") == runs


def test_a_window_reads_only_the_measures_from_its_step_on() -> None:
    run = probed("bn", 1, 0.5)  # measured at steps 0, 500 and 1000
    assert run_smoothness(run, from_step=500)["loss_variation"] == pytest.approx(
        stats.gmean([1.0, 1.5])
    )
    assert run_smoothness(run, from_step=1500) == {}
    result = smoothness(summarize([run, probed("plain", 1, 1.0)]), from_step=500)
    assert {row.measures for row in result.rows} == {2}
    assert "Measures from training step 500 on." in smoothness_markdown(result)
    assert smoothness_json(result)["from_step"] == 500


def test_the_figure_draws_each_variants_seeds(tmp_path: Path) -> None:
    runs = [probed("bn", seed, 0.2 + seed / 10) for seed in (1, 2)] + [probed("plain", 1, 1.0)]
    series = landscape_series(summarize(runs))
    assert {name: len(seeds) for name, seeds in series.items()} == {"bn": 2, "plain": 1}
    assert [row["step"] for row in series["plain"][0]] == [0.0, 500.0, 1000.0]
    save(landscape_figure(series), tmp_path / "landscape.png")
    assert (tmp_path / "landscape.png").stat().st_size > 20_000


def test_the_curves_roughness_is_compared_between_variants() -> None:
    def with_curve(run: RunResult, curve: list[float]) -> RunResult:
        return dataclasses.replace(
            run, val_accuracy={str(epoch + 1): value for epoch, value in enumerate(curve)}
        )

    bn = [with_curve(probed("bn", s, 0.2), [0.3, 0.5, 0.4 - s / 100, 0.6]) for s in (1, 2)]
    plain = [with_curve(probed("plain", s, 1.0), [0.1, 0.3 + s / 100, 0.29, 0.5]) for s in (1, 2)]
    stuck = with_curve(probed("plain", 3, 1.0), [0.1, 0.1, 0.1])  # no roughness: left out
    (gap,) = smoothness(summarize([*bn, *plain, stuck])).roughness
    assert gap.roughness.n == (2, 2)
    welch = stats.ttest_ind(
        [run.val_accuracy_roughness for run in bn],
        [run.val_accuracy_roughness for run in plain],
        equal_var=False,
    ).confidence_interval()
    assert (gap.roughness.low, gap.roughness.high) == pytest.approx((welch.low, welch.high))
    assert "validation accuracy fall-back per epoch, bn − plain: " in smoothness_markdown(
        smoothness(summarize([*bn, *plain, stuck]))
    )


def test_a_grids_figure_names_each_group_by_its_factors() -> None:
    runs = [probed("bn", 1, 0.2), probed("plain", 1, 1.0)]
    runs += [
        dataclasses.replace(
            run,
            run_id=run.run_id + "fast",
            experiment="lr-1e-2",
            params={**run.params, "train.learning_rate": "0.0031622776601683794"},
        )
        for run in runs
    ]
    runs = [
        run
        if "train.learning_rate" in run.params
        else dataclasses.replace(run, params={**run.params, "train.learning_rate": "0.001"})
        for run in runs
    ]
    series = landscape_series(summarize(runs))
    assert sorted(series) == [
        "learning_rate=0.001: bn",
        "learning_rate=0.001: plain",
        "learning_rate=0.00316: bn",  # a half-decade rate, to three digits
        "learning_rate=0.00316: plain",
    ]
    # One legend for the figure, below the panels, naming each series once.
    figure = landscape_figure(series)
    assert [axes.get_legend() for axes in figure.axes] == [None] * 4
    (legend,) = figure.legends
    assert sorted(text.get_text() for text in legend.get_texts()) == sorted(series)


def test_a_step_that_blew_up_is_counted_not_smoothed_over() -> None:
    """A measure the probe recorded as non-finite stays out of the geometric means, and the
    table counts it per row; a record older than the probe's count shows it by its infinity."""
    blown = probed("plain", 1, 1.0)
    blown.landscape["loss_variation"]["500"] = math.inf
    blown.landscape["non_finite"] = {"0": 0.0, "500": 2.0, "1000": 1.0}
    older = probed("plain", 2, 1.0)
    older.landscape["gradient_change"]["0"] = math.inf
    runs = [blown, older, probed("bn", 1, 0.5), probed("bn", 2, 0.5)]
    result = smoothness(summarize(runs))
    counted = {row.variant: row.non_finite for row in result.rows}
    assert counted == {"plain": 3, "bn": 0}
    assert math.isfinite(run_smoothness(blown)["loss_variation"])
    assert "| non-finite |" in smoothness_markdown(result)
    written = {row["variant"]: row["non_finite"] for row in smoothness_json(result)["rows"]}
    assert written == counted
