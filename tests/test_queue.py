"""Two queued experiments run at once (`dvc queue start -j 2`), both land in one store, and
`python -m pipeline.ablation` summarizes them from it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from scipy import stats

from pipeline.cifar10.chance import at_chance
from tests.conftest import (
    client_for,
    dvc,
    make_project,
    project_environment,
    run_command,
    runs_by_name,
)

VARIANTS = ("plain", "bn")

SEEDS = (1, 2)


def welch_or_none(a: list[float], b: list[float]) -> tuple[float | None, float | None]:
    """scipy's Welch 95% interval of mean(a) - mean(b); (None, None) where neither group
    spreads, as the summary's JSON writes a bound that does not exist."""
    if np.var(a) + np.var(b) == 0:
        return None, None
    welch = stats.ttest_ind(a, b, equal_var=False).confidence_interval()
    return welch.low, welch.high


def wait_for_queue(repo: Path, timeout_seconds: float = 900) -> str:
    """Poll `dvc queue status` until nothing is queued or running; returns the last status."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        status = dvc(repo, "queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"the DVC queue did not finish in {timeout_seconds} s:\n{status}")
        time.sleep(3)


@pytest.fixture(scope="module")
def queued(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project after two queued experiments, two seeds each, ran under `-j 2`."""
    repo = make_project(tmp_path_factory.mktemp("queue"))
    for name, rate in (("lr-fast", "0.01"), ("lr-slow", "0.0005")):
        dvc(
            repo, "exp", "run", "--queue", "-n", name, "-S", f"seeds={list(SEEDS)}",
            "-S", f"train.learning_rate={rate}", "-S", "train.speed.intra_op_threads=1",
            # relu + Adam learn the tiny colour-coded data in two epochs; sigmoid would not.
            "-S", "train.activation=relu", "-S", "train.optimizer=adam",
        )  # fmt: skip
    # The queue's workers outlive `dvc queue start` and would hold captured pipes open.
    subprocess.run(
        [sys.executable, "-m", "dvc", "queue", "start", "-j", "2"],
        cwd=repo,
        env=project_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    status = wait_for_queue(repo)
    assert status.count("Success") == 2 and "Failed" not in status, status
    return repo


def test_two_queued_experiments_run_at_once_into_one_store(queued: Path) -> None:
    runs = runs_by_name(queued)
    names = [f"{variant}-{seed}" for variant in VARIANTS for seed in SEEDS]
    for name in (*names, "compare"):
        finished = {
            run.data.tags["dvc_exp_name"] for run in runs[name] if run.info.status == "FINISHED"
        }
        assert finished == {"lr-fast", "lr-slow"}, name
    rates = {
        (run.data.tags["dvc_exp_name"], run.data.params["train.learning_rate"])
        for run in runs["bn-1"]
    }
    assert rates == {("lr-fast", "0.01"), ("lr-slow", "0.0005")}
    assert not list((queued / ".dvc/tmp").rglob("mlflow.db")), "the workspace's store, only"


def ablation(repo: Path, *args: str) -> dict:
    """Run `python -m pipeline.ablation` in `repo`; returns its JSON."""
    out = repo / "ablation" / "table"
    run_command([sys.executable, "-m", "pipeline.ablation", "--out", str(out), *args], repo)
    assert (repo / "ablation/table.md").read_text().startswith("Reference: ")
    return json.loads((repo / "ablation/table.json").read_text())


def by_experiment(client: MlflowClient, repo: Path) -> dict[tuple[str, str], list]:
    """The training runs' MLflow records by (DVC experiment, variant)."""
    grouped: dict[tuple[str, str], list] = {}
    for runs in runs_by_name(repo).values():
        for run in runs:
            if "test_accuracy" in run.data.metrics:
                key = (run.data.tags["dvc_exp_name"], run.data.tags["variant"])
                grouped.setdefault(key, []).append(run)
    return grouped


def test_ablation_groups_the_experiments_and_compares_them(queued: Path) -> None:
    client = client_for(queued)
    truth = by_experiment(client, queued)
    summary = ablation(queued, "--reference", "lr-slow")

    assert summary["reference"] == "lr-slow"
    factors = {group["name"]: group["factors"] for group in summary["groups"]}
    assert factors == {
        "lr-fast": {"train.learning_rate": "0.01"},
        "lr-slow": {"train.learning_rate": "0.0005"},
    }
    rows = {(row["group"], row["variant"]): row for row in summary["rows"]}
    assert set(rows) == set(truth)
    for (group, variant), row in rows.items():
        runs = truth[(group, variant)]
        accuracies = [run.data.metrics["test_accuracy"] for run in runs]
        assert row["seeds"] == len(SEEDS)
        assert row["test_accuracy_mean"] == np.mean(accuracies)
        first_epoch = [
            client.get_metric_history(run.info.run_id, "val_accuracy")[0].value for run in runs
        ]
        assert row["stuck_after_epoch_1"] == sum(at_chance(value) for value in first_epoch)
        assert row["first_layer_update_ratio"] > 0
        if group == "lr-slow":
            assert row["reference"] and "difference" not in row
            continue
        reference = [run.data.metrics["test_accuracy"] for run in truth[("lr-slow", variant)]]
        assert row["difference"] == np.mean(accuracies) - np.mean(reference)
        assert (row["ci_low"], row["ci_high"]) == welch_or_none(accuracies, reference)
        reference_stuck = rows[("lr-slow", variant)]["stuck_after_epoch_1"]
        table = [
            [row["stuck_after_epoch_1"], len(SEEDS) - row["stuck_after_epoch_1"]],
            [reference_stuck, len(SEEDS) - reference_stuck],
        ]
        assert row["stuck_after_epoch_1_p"] == stats.fisher_exact(table).pvalue
    # Within each group, bn against plain, as scipy's Welch interval gives it.
    between = {row["group"]: row for row in summary["between_variants"]}
    assert set(between) == {"lr-fast", "lr-slow"}
    for group, row in between.items():
        bn, plain = (
            [run.data.metrics["test_accuracy"] for run in truth[(group, variant)]]
            for variant in ("bn", "plain")
        )
        assert (row["variant"], row["baseline"]) == ("bn", "plain")
        assert row["difference"] == pytest.approx(np.mean(bn) - np.mean(plain))
        assert (row["ci_low"], row["ci_high"]) == welch_or_none(bn, plain)
    # Every run's per-layer update ratios, as MLflow holds them, kept and drawn.
    for record in json.loads((queued / "ablation/table.runs.json").read_text()):
        history = client.get_metric_history(record["run_id"], "probe/conv1/update_ratio")
        assert record["update_ratios"]["conv1"] == {str(m.step): m.value for m in history}
        assert set(record["update_ratios"]) >= {"conv1", "conv4", "dense", "classifier"}
        history = client.get_metric_history(record["run_id"], "probe/dense/saturated_fraction")
        assert record["probes"]["saturated_fraction"]["dense"] == {
            str(m.step): m.value for m in history
        }
        assert set(record["probes"]) == {"grad_norm", "saturated_fraction", "mean_derivative"}
        assert set(record["probes"]["grad_norm"]) >= {"conv1", "conv4", "dense", "classifier"}
        # What it cost, as the run logged it, and where it trained.
        run = client.get_run(record["run_id"])
        assert record["cost"] == {
            key: run.data.metrics[f"speed/{key}"]
            for key in ("wall_seconds", "probe_overhead", "landscape_overhead")
        }
        assert record["device"] == run.data.tags["device"] != ""
    minutes = sum(
        client.get_run(run.info.run_id).data.metrics["speed/wall_seconds"] / 60
        for runs in truth.values()
        for run in runs
    )
    assert (
        f"In all: {len(SEEDS) * 4} runs, {minutes:.0f} minutes of training"
        in (queued / "ablation/table.md").read_text()
    )
    figure = queued / "ablation/table-update_ratios.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ablation_takes_chosen_experiments_or_a_filter(queued: Path) -> None:
    chosen = ablation(queued, "--experiments", "lr-fast")
    assert [group["name"] for group in chosen["groups"]] == ["lr-fast"]
    filtered = ablation(queued, "--filter", "params.`train.learning_rate` = '0.0005'")
    assert [group["name"] for group in filtered["groups"]] == ["lr-slow"]
    # A grid summarized in parts: the runs one summary read are added to the next.
    part = queued / "ablation" / "part.runs.json"
    (queued / "ablation/table.runs.json").rename(part)
    whole = ablation(
        queued, "--experiments", "lr-fast", "--add-runs", str(part), "--reference", "lr-slow"
    )
    assert sorted(group["name"] for group in whole["groups"]) == ["lr-fast", "lr-slow"]
    at_once = ablation(queued, "--reference", "lr-slow")

    def keyed(summary: dict) -> dict:
        return {(row["group"], row["variant"]): row for row in summary["rows"]}

    assert keyed(whole) == keyed(at_once)
    missing = run_command(
        [sys.executable, "-m", "pipeline.ablation", "--experiments", "nothing-like-it"],
        queued,
        check=False,
    )
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith("error: no finished training run")


# Last in this file: it adds a grid's runs to the store the tests above read whole.
def test_a_grid_of_the_same_cells_trains_what_the_queue_trained(queued: Path) -> None:
    """The queue's cells declared as a grid on the default journal and worked by two workers
    on this machine: the same test accuracies (training is deterministic) and the same
    ablation table."""
    dvc(queued, "repro", "fetch")  # the queue fetched in its own copies of the workspace
    grid = [sys.executable, "-m", "pipeline.grid"]
    run_command(
        [
            *grid, "declare", "lr", "--seeds", "1-2",
            "--factor", "train.learning_rate=0.01,0.0005",
            "--factor", "train.activation=relu", "--factor", "train.optimizer=adam",
        ],
        queued,
    )  # fmt: skip
    run_command([*grid, "work", "lr", "--workers", "2"], queued)
    status = run_command([*grid, "status", "lr"], queued).stdout
    assert "grid lr: 8 cells: 8 done, 0 diverged, 0 running, 0 failed, 0 waiting" in status

    def accuracies(tag: str, value: str) -> dict[tuple[str, str, str], float]:
        return {
            (run.data.params["train.learning_rate"], run.data.tags["variant"], run.data.tags["seed"]):  # noqa: E501
            run.data.metrics["test_accuracy"]
            for runs in runs_by_name(queued).values()
            for run in runs
            if run.data.tags.get(tag) == value and "test_accuracy" in run.data.metrics
        }  # fmt: skip

    from_grid = accuracies("grid", "lr")
    from_queue = {**accuracies("dvc_exp_name", "lr-fast"), **accuracies("dvc_exp_name", "lr-slow")}
    assert len(from_grid) == 8
    assert from_grid == from_queue

    queue_table = ablation(queued, "--experiments", "lr-fast", "lr-slow", "--reference", "lr-slow")
    grid_table = ablation(queued, "--grid", "lr", "--reference", "train.learning_rate=0.0005")

    def by_factors(summary: dict) -> dict:
        factors = {group["name"]: group["factors"] for group in summary["groups"]}
        return {
            (tuple(factors[row["group"]].items()), row["variant"]): {
                key: value
                for key, value in row.items()
                if key not in ("group", "runs")  # the runs' MLflow ids differ, of course
            }
            for row in summary["rows"]
        }

    assert by_factors(grid_table) == by_factors(queue_table)
