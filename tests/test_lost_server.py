"""A tracking server lost in the middle of `dvc repro`: the stage ends soon with one line, and
training resumes where it stopped once the server is back."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

from tests.conftest import (
    edit_params,
    free_port,
    project_environment,
    run_command,
    trained_project,
    wait_for_health,
)


def test_a_tracking_server_lost_mid_training_fails_the_stage_soon_and_training_resumes(
    tmp_path: Path,
) -> None:
    """An `mlflow server` stopped during `dvc repro train@...`: the stage ends within MLflow's
    bounded retries with one line naming the server; started again, a rerun continues from
    the last completed epoch (train.resume)."""
    copy = trained_project(tmp_path, "tune@plain")
    edit_params(copy, lambda values: values["train"].update(epochs=60, resume=True))
    url = f"http://127.0.0.1:{free_port()}"
    to_server = {"MLFLOW_TRACKING_URI": url, "no_proxy": "127.0.0.1"}

    def start_server() -> subprocess.Popen[bytes]:
        port = url.rsplit(":", 1)[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", port,
             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
             "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        wait_for_health(url, server)
        return server

    server = start_server()
    stage = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "train@plain-42"],
        cwd=copy,
        env=project_environment(to_server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = MlflowClient(url)
    deadline = time.monotonic() + 300
    # Two epochs logged: the first epoch's checkpoint is then written (it comes after the
    # epoch's MLflow logging), which is what a resumed run continues from.
    while not any(
        len(client.get_metric_history(run.info.run_id, "val_accuracy")) >= 2
        for run in client.search_runs([e.experiment_id for e in client.search_experiments()])
    ):
        assert stage.poll() is None and time.monotonic() < deadline, "two epochs not logged"
        time.sleep(0.2)
    server.terminate()
    server.wait()
    lost = time.monotonic()
    _, stderr = stage.communicate(timeout=600)
    failed_after = time.monotonic() - lost

    assert stage.returncode != 0
    assert f"error: the MLflow tracking server {url} stopped answering" in stderr
    assert "Traceback" not in stderr
    print(f"\nthe stage failed {failed_after:.1f} s after the server stopped")
    assert failed_after < 60  # refused connections: about 15 s a call, store.HTTP_RETRY_BOUNDS

    server = start_server()
    try:
        resumed = run_command(
            [sys.executable, "-m", "dvc", "repro", "train@plain-42"], copy, extra_env=to_server
        )
    finally:
        server.terminate()
        server.wait()
    completed = re.search(r"resuming after epoch (\d+)", resumed.stderr)
    assert completed is not None and int(completed[1]) >= 1, resumed.stderr[-2000:]
