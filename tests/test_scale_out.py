"""Scale-out with real servers: a PostgreSQL study storage and an `mlflow server`, both on
this machine, shared by three tuning workers started at once, as a team would run them."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from pipeline.params import Params
from pipeline.tuning.data import subset_data
from tests.conftest import PROJECT_ROOT, project_environment
from tests.test_tune import VARIANT, load, tiny_data, write_project

WORKERS = 3
TRIALS = 6
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class Servers:
    """Where the study storage and the tracking server listen."""

    optuna_url: str
    mlflow_url: str


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_health(url: str, server: subprocess.Popen[bytes], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow server exited: {server.stderr.read().decode()[-3000:]}")  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server at {url} did not answer within {seconds} s")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """A PostgreSQL server with `optuna` and `mlflow` databases, and an MLflow server on it."""
    import pgserver

    root = tmp_path_factory.mktemp("servers")
    postgres = pgserver.get_server(root / "pg", cleanup_mode="stop")
    try:
        for database in ("optuna", "mlflow"):
            postgres.psql(f"CREATE DATABASE {database};")
        database_url = postgres.get_uri("{}").replace("postgresql://", "postgresql+psycopg://")
        port = free_port()
        mlflow_url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "mlflow"),
                "server",
                "--backend-store-uri",
                database_url.format("mlflow"),
                "--artifacts-destination",
                str(root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            env=project_environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            started = time.perf_counter()
            wait_for_health(mlflow_url, server)
            print(f"mlflow server up in {time.perf_counter() - started:.1f} s")
            yield Servers(postgres.get_uri("optuna"), mlflow_url)
        finally:
            server.terminate()
            server.wait(timeout=60)
    finally:
        postgres.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def test_three_workers_share_a_postgresql_study_and_an_mlflow_server(
    servers: Servers, tmp_path: Path
) -> None:
    root = write_project(tmp_path / "project")
    command = [
        sys.executable, "-m", "pipeline.tune", VARIANT,
        "--n-trials", str(TRIALS), "--storage", servers.optuna_url,
    ]  # fmt: skip
    env = {
        **project_environment({"MLFLOW_TRACKING_URI": servers.mlflow_url}),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    started = time.perf_counter()
    workers = [
        subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(WORKERS)
    ]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    print(f"{WORKERS} workers, {TRIALS} trials: {time.perf_counter() - started:.1f} s")
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr.decode()[-3000:]
        assert "Traceback" not in stderr.decode()

    params = Params.model_validate(yaml.safe_load((root / "params.yaml").read_text()))
    subset = subset_data(tiny_data(), params.tune.subset, params.seed)
    trials = load(servers.optuna_url, params, subset).get_trials(deepcopy=False)
    finished = {trial.number for trial in trials if trial.state in FINISHED}
    # MaxTrialsCallback stops each worker after its trial ends: up to one extra per other worker.
    assert TRIALS <= len(finished) <= TRIALS + WORKERS - 1
    assert not [trial for trial in trials if trial.state == TrialState.RUNNING]

    client = MlflowClient(tracking_uri=servers.mlflow_url)
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == WORKERS
    assert {run.info.status for run in runs} == {"FINISHED"}
    logged = [int(run.data.tags["optuna_trial_number"]) for run in children]
    assert sorted(logged) == sorted(trial.number for trial in trials)
    assert finished <= set(logged)
