"""Interrupted and killed stages: nothing half-written survives, MLflow runs do not stay
RUNNING, and a rerun gives what an uninterrupted run gives."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.common.errors import PipelineError
from pipeline.common.files import write_json
from pipeline.tracking import names
from pipeline.tracking import store as tracking
from tests.conftest import project_environment, small_values
from tests.sources import write_class_folder


def dead_pid() -> int:
    """The pid of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite store with the experiment `interrupted`; returns its id."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tracking.connect("interrupted")


def test_an_experiment_deleted_in_mlflow_s_ui_is_named_with_the_way_back(store: str) -> None:
    MlflowClient().delete_experiment(store)  # what the UI's delete does: to the trash
    with pytest.raises(PipelineError, match=r"experiment 'interrupted' is deleted") as raised:
        tracking.connect("interrupted")
    assert f"mlflow experiments restore --experiment-id {store}" in str(raised.value)
    MlflowClient().restore_experiment(store)
    assert tracking.connect("interrupted") == store


def test_runs_left_running_by_dead_processes_are_marked_killed(store: str) -> None:
    client = MlflowClient()
    here = tracking.process_tags()[names.HOST_TAG]
    owners = {
        "dead here": {names.HOST_TAG: here, names.PID_TAG: str(dead_pid())},
        "alive here": {names.HOST_TAG: here, names.PID_TAG: str(os.getpid())},
        "elsewhere": {names.HOST_TAG: "another-machine", names.PID_TAG: str(dead_pid())},
    }
    runs = {
        name: client.create_run(store, run_name=name, tags=tags).info.run_id
        for name, tags in owners.items()
    }

    tracking.connect("interrupted")

    statuses = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert statuses == {"dead here": "KILLED", "alive here": "RUNNING", "elsewhere": "RUNNING"}


def test_a_run_reopened_beside_a_starting_stage_is_not_marked_killed(store: str) -> None:
    # evaluate reopens the run a training process made and left; a stage connecting
    # meanwhile (a parallel queue worker) must not take it for that dead process's orphan.
    client = MlflowClient()
    trained = {**tracking.process_tags(), names.PID_TAG: str(dead_pid())}
    run_id = client.create_run(store, run_name="bn-1", tags=trained).info.run_id
    client.set_terminated(run_id, "FINISHED")

    with tracking.resumed_run(run_id):
        tracking.connect("interrupted")
        assert client.get_run(run_id).info.status == "RUNNING"
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_temporary_left_by_a_killed_writer_is_removed(tmp_path: Path) -> None:
    leftover = tmp_path / ".stats.x1y2z3.tmp.json"
    leftover.write_text('{"half": ')
    write_json(tmp_path / "stats.json", {"whole": True})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["stats.json"]


# --- killing the training stage ------------------------------------------------------------

EPOCHS = 12


def training_folder(root: Path, resume: bool = False) -> Path:
    """A folder with params.yaml and the fetch and normalize outputs of a tiny dataset."""
    root.mkdir()
    values = small_values(
        data={"source": "cifar10-small.tar.gz"},
        train={"epochs": EPOCHS, "resume": resume},
        mlflow={"log_model": False},
    )
    (root / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    write_class_folder(root, "tar.gz", per_class_train=3, per_class_test=1)
    for stage in ("fetch", "normalize", "tune"):
        command = ["pipeline.tune", "bn"] if stage == "tune" else [f"pipeline.{stage}"]
        subprocess.run(
            [sys.executable, "-m", *command],
            cwd=root,
            env=project_environment(root=root),
            check=True,
        )
    return root


def train(root: Path) -> subprocess.CompletedProcess[str]:
    """Run `train bn` to its end; raises if it fails."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.train", "bn"],
        cwd=root,
        env=project_environment(root=root),
        capture_output=True,
        text=True,
        check=True,
    )


def train_until_epoch(root: Path, epoch: int, signum: int) -> subprocess.CompletedProcess[str]:
    """Start `train bn`, send `signum` once epoch `epoch` has begun, and wait for the end."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.train", "bn"],
        cwd=root,
        env=project_environment(root=root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(f"Epoch {epoch}/"):
            process.send_signal(signum)
            break
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def train_metrics(root: Path) -> dict[str, float]:
    """The training metrics that do not depend on the machine's speed."""
    metrics = json.loads((root / "results/bn-42/train_metrics.json").read_text())
    timings = ("wall_seconds", "images_per_second", "probe_seconds", "probe_overhead")
    return {k: v for k, v in metrics.items() if k not in timings}


def outputs(root: Path) -> list[str]:
    """The stage files in `root`: everything but the MLflow store."""
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if not path.name.startswith("mlflow.db") and "mlartifacts" not in path.parts
    )


def run_statuses(root: Path) -> list[str]:
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bn-cifar10")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])
    return [run.info.status for run in runs]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_killed_training_leaves_nothing_and_a_rerun_matches(signum: int, tmp_path: Path) -> None:
    uninterrupted = training_folder(tmp_path / "uninterrupted")
    train(uninterrupted)
    root = training_folder(tmp_path / "interrupted")
    before = outputs(root)

    killed = train_until_epoch(root, 3, signum)

    assert killed.returncode != 0
    if signum != signal.SIGKILL:
        assert killed.stderr.count("error: interrupted") == 1, killed.stderr[-2000:]
        assert run_statuses(root) == ["KILLED"]
    else:
        assert run_statuses(root) == ["RUNNING"]  # until the next stage connects
    assert outputs(root) == before, "no output, finished or half-written, may be left"

    train(root)
    assert run_statuses(root) == ["KILLED", "FINISHED"]
    assert train_metrics(root) == train_metrics(uninterrupted)


@pytest.mark.slow
def test_resumed_training_continues_from_the_last_completed_epoch(tmp_path: Path) -> None:
    root = training_folder(tmp_path / "resumed", resume=True)
    killed = train_until_epoch(root, 4, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert list((root / ".cache" / "resume").iterdir()), "checkpoints of epochs 1-3 are kept"

    resumed = train(root)

    assert "resuming after epoch 3" in resumed.stderr
    assert f"Epoch 4/{EPOCHS}" in resumed.stdout and "Epoch 1/" not in resumed.stdout
    history = list(csv.DictReader((root / "results/bn-42/history.csv").open()))
    assert [int(float(row["epoch"])) for row in history] == list(range(1, EPOCHS + 1))
    # The probes and the time of the epochs before the kill are kept, not only those after.
    probes = list(csv.DictReader((root / "results/bn-42/probes.csv").open()))
    assert sorted({int(float(row["epoch"])) for row in probes}) == list(range(1, EPOCHS + 1))
    metrics = json.loads((root / "results/bn-42/train_metrics.json").read_text())
    assert metrics["wall_seconds"] >= sum(float(row["epoch_seconds"]) for row in history)
    assert run_statuses(root) == ["FINISHED"]  # the killed run, resumed and finished
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run_id = json.loads((root / "results/bn-42/mlflow_run.json").read_text())["run_id"]
    steps = [metric.step for metric in client.get_metric_history(run_id, "val_accuracy")]
    assert sorted(set(steps)) == list(range(1, EPOCHS + 1))
    assert not list((root / ".cache" / "resume").iterdir()), "checkpoints go once done"


def test_a_run_deleted_in_mlflow_s_ui_or_gone_is_named_with_the_way_back(store: str) -> None:
    client = MlflowClient()
    run_id = client.create_run(store, run_name="plain-42").info.run_id
    client.set_terminated(run_id)
    tracking.check_run_usable(run_id, "retrain")  # a live run: nothing to say
    client.delete_run(run_id)  # what the UI's delete does: to the trash
    with pytest.raises(PipelineError, match=r"run .* \(plain-42\) is deleted") as raised:
        tracking.check_run_usable(run_id, "retrain")
    assert f"mlflow runs restore --run-id {run_id}" in str(raised.value)
    assert str(raised.value).endswith("or retrain")
    client.restore_run(run_id)
    tracking.check_run_usable(run_id, "retrain")
    with pytest.raises(PipelineError, match="no longer exists .*: retrain"):
        tracking.check_run_usable("0" * 32, "retrain")
