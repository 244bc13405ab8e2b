"""Two queued experiments run at once (`dvc queue start -j 2`) and both land in one store."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import dvc, make_project, project_environment
from tests.test_pipeline import VARIANTS, runs_by_name


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


def test_two_queued_experiments_run_at_once_into_one_store(tmp_path: Path) -> None:
    repo = make_project(tmp_path)
    for name, rate in (("lr-fast", "0.01"), ("lr-slow", "0.0005")):
        dvc(
            repo, "exp", "run", "--queue", "-n", name,
            "-S", f"train.learning_rate={rate}", "-S", "train.speed.intra_op_threads=1",
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

    runs = runs_by_name(repo)
    for variant in (*VARIANTS, "compare"):
        finished = {
            run.data.tags["dvc_exp_name"] for run in runs[variant] if run.info.status == "FINISHED"
        }
        assert finished == {"lr-fast", "lr-slow"}, variant
    rates = {
        (run.data.tags["dvc_exp_name"], run.data.params["train.learning_rate"])
        for run in runs["bn"]
    }
    assert rates == {("lr-fast", "0.01"), ("lr-slow", "0.0005")}
    assert not list((repo / ".dvc/tmp").rglob("mlflow.db")), "the workspace's store, only"
