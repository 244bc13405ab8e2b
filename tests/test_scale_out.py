"""Scale-out with real servers: a PostgreSQL study storage and an `mlflow server`, both on
this machine, shared by three tuning workers started at once, as a team would run them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from pipeline.config.params import Params
from pipeline.tuning.data import subset_data
from tests.conftest import (
    PROJECT_ROOT,
    TUNING_VARIANT,
    free_port,
    load_tuning_study,
    make_project,
    project_environment,
    run_command,
    tiny_colour_data,
    wait_for_health,
    write_tuning_project,
)

WORKERS = 3
TRIALS = 6
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class Servers:
    """Where the study storage and the tracking server listen."""

    optuna_url: str
    mlflow_url: str


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
    root = write_tuning_project(tmp_path / "project")
    command = [
        sys.executable, "-m", "pipeline.tune", TUNING_VARIANT,
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
    subset = subset_data(tiny_colour_data(), params.tune.subset, params.seed)
    trials = load_tuning_study(servers.optuna_url, params, subset).get_trials(deepcopy=False)
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


def grid_worker(repo: Path, servers: Servers, name: str, *options: str) -> subprocess.Popen[bytes]:
    """`python -m pipeline.grid work NAME` on the servers, one process with one thread."""
    command = [
        sys.executable, "-m", "pipeline.grid", "work", name, "--workers", "1",
        "--threads", "1", "--storage", servers.optuna_url, *options,
    ]  # fmt: skip
    return subprocess.Popen(
        command,
        cwd=repo,
        env=project_environment({"MLFLOW_TRACKING_URI": servers.mlflow_url}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def fetched_project(root: Path) -> Path:
    repo = make_project(root)
    run_command([sys.executable, "-m", "pipeline.fetch"], repo)
    return repo


def grid_runs(servers: Servers, name: str) -> list[Run]:
    client = MlflowClient(tracking_uri=servers.mlflow_url)
    experiment = client.get_experiment_by_name("bn-cifar10")
    assert experiment is not None
    return client.search_runs([experiment.experiment_id], f"tags.grid = '{name}'")


def test_three_grid_workers_run_every_cell_once(servers: Servers, tmp_path: Path) -> None:
    repo = fetched_project(tmp_path)
    run_command(
        [
            sys.executable, "-m", "pipeline.grid", "declare", "grid3", "--seeds", "1-2",
            "--factor", "train.learning_rate=0.01,0.0005", "--storage", servers.optuna_url,
        ],
        repo,
    )  # fmt: skip
    started = time.perf_counter()
    workers = [grid_worker(repo, servers, "grid3") for _ in range(WORKERS)]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    print(f"{WORKERS} grid workers, 8 cells: {time.perf_counter() - started:.1f} s")
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr.decode()[-3000:]
        assert "Traceback" not in stderr.decode()

    study = optuna.load_study(study_name="grid3", storage=servers.optuna_url)
    trials = study.get_trials(deepcopy=False)
    errors = [trial.user_attrs.get("error") for trial in trials]
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 8, errors  # claimed once
    assert sorted(trial.user_attrs["cell"]["number"] for trial in trials) == list(range(8))
    runs = grid_runs(servers, "grid3")
    assert sorted(int(run.data.tags["grid_cell"]) for run in runs) == list(range(8))
    assert {run.info.status for run in runs} == {"FINISHED"}
    for trial in trials:
        run = next(run for run in runs if run.info.run_id == trial.user_attrs["mlflow_run_id"])
        assert run.data.metrics["test_accuracy"] == trial.value
        assert run.info.run_name == f"{trial.params['variant']}-{trial.params['seed']}"
    used = {trial.user_attrs["worker"] for trial in trials}
    assert len(used) > 1, "the cells were shared out"

    out = repo / "ablation" / "grid3"
    run_command(
        [sys.executable, "-m", "pipeline.ablation", "--grid", "grid3", "--out", str(out)],
        repo,
        extra_env={"MLFLOW_TRACKING_URI": servers.mlflow_url},
    )
    records = json.loads(out.with_suffix(".runs.json").read_text())
    assert sorted(record["run_id"] for record in records) == sorted(r.info.run_id for r in runs)
    assert {record["grid"] for record in records} == {"grid3"}
    table = out.with_suffix(".md").read_text()
    for rate in ("0.01", "0.0005"):
        assert f"train.learning_rate={rate}" in table


def test_a_killed_grid_worker_s_cell_is_run_by_another(servers: Servers, tmp_path: Path) -> None:
    repo = fetched_project(tmp_path)
    run_command(
        [
            sys.executable, "-m", "pipeline.grid", "declare", "killed", "--seeds", "1-2",
            "--variants", "plain", "--factor", "train.epochs=15", "--storage", servers.optuna_url,
        ],
        repo,
    )  # fmt: skip
    heartbeat = ("--heartbeat-interval", "1", "--heartbeat-grace", "6")
    first = grid_worker(repo, servers, "killed", *heartbeat)
    deadline = time.monotonic() + 300
    while not [run for run in grid_runs(servers, "killed") if run.info.status == "RUNNING"]:
        assert first.poll() is None and time.monotonic() < deadline, "no cell started training"
        time.sleep(0.5)
    first.kill()  # SIGKILL: nothing is cleaned up, as when a machine is lost
    first.communicate()
    killed_at = time.time()
    second = grid_worker(repo, servers, "killed", *heartbeat)
    _, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr.decode()[-3000:]

    study = optuna.load_study(study_name="killed", storage=servers.optuna_url)
    trials = study.get_trials(deepcopy=False)
    states = [(trial.user_attrs["cell"]["number"], trial.state) for trial in trials]
    assert sorted(states) == [
        (0, TrialState.COMPLETE),
        (0, TrialState.FAIL),
        (1, TrialState.COMPLETE),
    ]
    retried = next(trial for trial in trials if trial.system_attrs.get("failed_trial") == 0)
    assert retried.datetime_start is not None
    print(f"the killed cell ran again {retried.datetime_start.timestamp() - killed_at:.1f} s later")
    runs = grid_runs(servers, "killed")
    assert sorted(run.info.status for run in runs) == ["FINISHED", "FINISHED", "KILLED"]
    assert "marked KILLED" in stderr.decode()
