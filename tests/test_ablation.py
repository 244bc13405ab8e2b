"""The ablation summary's grouping, on runs as MLflow holds them (tests/test_queue.py runs
the whole workflow through real queued DVC experiments)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.ablation import RunResult, comparable_params, group_runs, with_added_runs
from pipeline.files import write_json


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
