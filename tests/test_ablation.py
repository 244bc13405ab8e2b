"""The ablation summary's grouping, on runs as MLflow holds them (tests/test_queue.py runs
the whole workflow through real queued DVC experiments)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from scipy import stats

from pipeline.analysis.cost import cost_markdown, cost_rows, uncosted_runs
from pipeline.analysis.grouping import group_runs
from pipeline.analysis.runs import RunResult, comparable_params, with_added_runs
from pipeline.analysis.summary import summarize
from pipeline.analysis.sweep import left_chance_tests, sweep_figure, sweep_points, sweep_table
from pipeline.common.errors import PipelineError
from pipeline.common.files import write_json
from pipeline.records.figures import save


def run(seed: int, **params: str) -> RunResult:
    shared = {"normalize.method": "standardize", "train.batch_norm": "False"}
    return RunResult(
        run_id=f"run{seed}{len(params)}",
        experiment="",
        variant="plain",
        seed=str(seed),
        params=comparable_params({**shared, **params}),
        test_accuracy=0.6,
        val_accuracy_first=0.3,
        val_accuracy_last=0.6,
        first_layer_update=1e-3,
    )


def test_runs_logged_before_the_precision_rename_group_with_runs_after_it() -> None:
    before = run(1, **{"train.speed.mixed_precision": "False"})
    after = run(
        2,
        **{
            "train.speed.precision": "float32",
            "train.speed.float32_nonlinearities": "True",
            "train.speed.steps_per_execution": "8",
        },
    )
    (group,) = group_runs([before, after])
    assert len(group.runs) == 2


def test_bfloat16_runs_stay_apart_by_what_ran_in_bfloat16() -> None:
    all_bfloat16 = run(1, **{"train.speed.mixed_precision": "True"})
    same_again = run(
        2,
        **{
            "train.speed.precision": "mixed_bfloat16",
            "train.speed.float32_nonlinearities": "False",
        },
    )
    float32_sigmoids = run(
        3,
        **{"train.speed.precision": "mixed_bfloat16", "train.speed.float32_nonlinearities": "True"},
    )
    float32 = run(4, **{"train.speed.mixed_precision": "False"})
    groups = group_runs([all_bfloat16, same_again, float32_sigmoids, float32])
    assert sorted(len(group.runs) for group in groups) == [1, 1, 2]
    (pair,) = [group for group in groups if len(group.runs) == 2]
    assert {result.seed for result in pair.runs} == {"1", "2"}


def test_the_same_archive_in_other_folders_is_one_setting() -> None:
    here = run(1, **{"data.source": "../datasets/cifar10-jpeg.tar.gz"})
    committed = run(2, **{"data.source": "cifar10-jpeg.tar.gz"})
    official = run(3, **{"data.source": "official"})
    groups = group_runs([here, committed, official])
    assert sorted(len(group.runs) for group in groups) == [1, 2]


def test_runs_added_from_several_parts_count_once(tmp_path: Path) -> None:
    """Part 2's file holds part 1's runs too: adding both, or a run still in MLflow, must not
    count a run twice."""
    first, second, third = run(1), run(2), run(3)
    part1, part2 = tmp_path / "part1.runs.json", tmp_path / "part2.runs.json"
    write_json(part1, [dataclasses.asdict(first)])
    write_json(part2, [dataclasses.asdict(first), dataclasses.asdict(second)])
    merged = with_added_runs([third, second], [part1, part2])
    assert sorted(result.seed for result in merged) == ["1", "2", "3"]


def sweep_run(variant: str, rate: str, seed: int, accuracy: float) -> RunResult:
    curve = {"1": 0.1, "2": 0.1} if accuracy <= 0.11 else {"1": 0.3, "2": 0.25, "3": accuracy}
    return RunResult(
        run_id=f"{variant}-{rate}-{seed}",
        experiment=f"lr-{rate}-{variant}",
        variant=variant,
        seed=str(seed),
        params={"train.learning_rate": rate, "train.batch_norm": str(variant == "bn")},
        test_accuracy=accuracy,
        val_accuracy_first=curve["1"],
        val_accuracy_last=list(curve.values())[-1],
        first_layer_update=1e-3,
        val_accuracy=curve,
    )


def test_a_sweep_says_which_rates_each_variant_tolerates(tmp_path: Path) -> None:
    runs = [
        sweep_run("plain", "0.01", 1, 0.1),
        sweep_run("plain", "0.01", 2, 0.1),
        sweep_run("plain", "0.001", 1, 0.62),
        sweep_run("plain", "0.001", 2, 0.1),
        sweep_run("bn", "0.01", 1, 0.66),
        sweep_run("bn", "0.01", 2, 0.68),
        sweep_run("bn", "0.001", 1, 0.69),
        sweep_run("bn", "0.001", 2, 0.70),
    ]
    summary = summarize(runs)
    points = sweep_points(summary, "train.learning_rate", {("lr-0.01-bn", "bn"): 1})
    by = {(point.variant, point.value): point for point in points}
    assert by[("plain", 0.01)].tolerated == "no"
    assert by[("plain", 0.001)].tolerated == "partly (1/2)"
    assert by[("bn", 0.001)].tolerated == "yes"
    assert by[("bn", 0.01)].tolerated == "partly (2/3)"  # one run of it failed
    bn = by[("bn", 0.001)]
    assert bn.low < bn.test_accuracy.mean < bn.high
    assert bn.high - bn.low == pytest.approx(2 * 12.706 * 0.00707 / 2**0.5, rel=1e-3)
    # Roughness of (0.3, 0.25, 0.69) and (0.3, 0.25, 0.70): a fall of 0.05 over 2 epochs each.
    assert bn.roughness.mean == pytest.approx(0.025)
    assert by[("plain", 0.01)].roughness.n == 0  # stuck runs have none
    table = sweep_table(points, "train.learning_rate").markdown()
    assert (
        "| plain | 0.01 | 2 | 0.1000 ± 0.0000 (no interval) | 0/2 [0.00, 0.84] | 0 | no |" in table
    )
    # plain at 0.001 (0.62 and 0.1) is bimodal: no t interval (it would be about [-2.9, 3.7]),
    # the learner's value instead, and the exact interval of the share that left chance.
    mixed = by[("plain", 0.001)]
    assert mixed.mixed and math.isnan(mixed.low) and mixed.learned == [0.62]
    assert (
        "| plain | 0.001 | 2 | 0.3600 ± 0.3677 (mixed; learners: 0.6200) | 1/2 [0.01, 0.99] |"
        in table
    )
    assert not by[("bn", 0.001)].mixed
    figure = sweep_figure(points, "train.learning_rate")
    bands = [c for c in figure.axes[0].collections if isinstance(c, PolyCollection)]
    heights = np.concatenate(
        [np.asarray(path.vertices)[:, 1] for band in bands for path in band.get_paths()]
    )
    assert len(bands) == 2 and heights.min() > 0.0 and heights.max() < 1.0
    # Leaving chance, bn against plain at each rate: Fisher's exact test, Holm over the two.
    tests = {test.value: test for test in left_chance_tests(points, "plain")}
    assert tests[0.01].left == (2, 3) and tests[0.01].baseline_left == (0, 2)
    assert tests[0.01].p == stats.fisher_exact([[2, 1], [0, 2]]).pvalue
    assert tests[0.001].p == stats.fisher_exact([[2, 0], [1, 1]]).pvalue
    assert tests[0.01].holm_p == min(1.0, 2 * min(tests[0.01].p, tests[0.001].p))
    save(figure, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    with pytest.raises(PipelineError, match="do not differ in train.epochs"):
        sweep_points(summary, "train.epochs")


def test_the_cost_section_counts_the_runs_that_kept_their_cost() -> None:
    def costed(seed: int, minutes: float, landscape: float, **params: str) -> RunResult:
        return dataclasses.replace(
            run(seed, **params),
            cost={
                "wall_seconds": minutes * 60,
                "probe_overhead": 0.01,
                "landscape_overhead": landscape,
            },
            device="CPU: test",
        )

    # Two groups (two rates), the first with the landscape probe on.
    probed = {"train.learning_rate": "0.01", "train.probe.landscape.every_steps": "500"}
    summary = summarize(
        [
            costed(1, 6.0, 0.09, **probed),
            costed(2, 8.0, 0.11, **probed),
            run(3, **probed),  # a record written before the cost was kept
            costed(1, 5.0, 0.0, **{"train.learning_rate": "0.001"}),
        ]
    )
    rows = {row.group: row for row in cost_rows(summary)}
    assert [len(row.minutes) for row in rows.values()] == [2, 1]
    assert uncosted_runs(summary) == 1
    page = cost_markdown(list(rows.values()), uncosted_runs(summary))
    assert "3 runs, 19 minutes of training, on CPU: test; not counted: 1 run whose records" in page
    assert cost_markdown(list(rows.values())).splitlines()[0].endswith("on CPU: test.")
    lines = page.splitlines()
    assert any("| 2 | 14 | 6.0–8.0 | 1.0% | 9.0%–11.0% |" in line for line in lines), page
    assert any("| 1 | 5 | 5.0 | 1.0% | off |" in line for line in lines), page
    assert cost_markdown([]) == ""
