"""`./tasks.sh ui` and `./tasks.sh dashboard`: the links they print and the servers they start."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest

from tests.conftest import PROJECT_ROOT
from tools import ui


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy2(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    return tmp_path


def test_the_mlflow_link_opens_the_experiments_runs_in_the_training_view(project: Path) -> None:
    url, command = ui.mlflow_ui(5001)
    assert (
        url == "http://127.0.0.1:5001/#/experiments?workflowType=machine_learning"
    )  # no store yet
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    mlflow.create_experiment("other")
    experiment = mlflow.create_experiment("bn-cifar10")
    url, command = ui.mlflow_ui(5001)
    assert url == (
        f"http://127.0.0.1:5001/#/experiments/{experiment}/runs?workflowType=machine_learning"
    )
    assert command == [
        "mlflow", "ui", "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}",
        "--host", "127.0.0.1", "--port", "5001",
    ]  # fmt: skip


def test_the_dashboard_opens_the_studies_storage(project: Path) -> None:
    url, command = ui.dashboard(8081)
    assert url == "http://127.0.0.1:8081/"
    journal = str(project / "optuna.journal")
    assert command == ["optuna-dashboard", journal, "--host", "127.0.0.1", "--port", "8081"]
