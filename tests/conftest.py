"""Shared fixtures: a throw-away copy of the project wired to a tiny fixture dataset."""

from __future__ import annotations

import copy
import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import optuna
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from pipeline.config.layout import Stores
from pipeline.config.params import Params
from pipeline.config.train_params import TrainParams
from pipeline.tuning.spec import StudySpec
from pipeline.tuning.storage import open_storage
from tests.sources import write_class_folder
from tools.plots_template import TEMPLATE as PLOTS_TEMPLATE
from tools.plots_template import use_template

if TYPE_CHECKING:  # TensorFlow is imported by the tests that train, not by every test
    from pipeline.training.inputs import TrainingData

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("pipeline", "tools", "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore")
DVC_FILES = (".gitignore", "config", "plots")


def project_environment(
    extra: dict[str, str] | None = None, root: Path | None = None
) -> dict[str, str]:
    """The environment stages run in: this interpreter first on PATH, the project's code
    importable from anywhere, and the local stores (with `root`, its mlflow.db)."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    if root is not None:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    env.update(extra or {})
    return env


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on now (the OS picked it, then let it go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stores_at(root: Path) -> Stores:
    """The stores of an in-process stage under `root`: its own MLflow SQLite store there."""
    return Stores(root, f"sqlite:///{root / 'mlflow.db'}")


def run_command(
    args: list[str], cwd: Path, check: bool = True, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command in `cwd` with the project environment; show its output on failure."""
    result = subprocess.run(
        args, cwd=cwd, env=project_environment(extra_env), capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the DVC CLI of this environment inside `repo`."""
    return run_command([sys.executable, "-m", "dvc", *args], repo, check)


def edit_params(repo: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply `edit` to the repository's params.yaml, keeping key order."""
    path = repo / "params.yaml"
    values = yaml.safe_load(path.read_text())
    edit(values)
    path.write_text(yaml.safe_dump(values, sort_keys=False))


# The one shrinking of params.yaml the tests use: a whole DAG in about a minute on two cores.
SMALL = {
    "data": {"source": "fixture/cifar10-small.tar.gz", "val_fraction": 0.2},
    "train": {"epochs": 2, "batch_size": 8},
}


def deep_update(values: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`values` with `changes` applied key by key, recursing into sections (in place)."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            deep_update(values[key], value)
        else:
            values[key] = value
    return values


def small_values(**changes: Any) -> dict[str, Any]:
    """The project's params.yaml shrunk to SMALL, then `changes` (sections merged key by key)."""
    values = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    return deep_update(deep_update(values, copy.deepcopy(SMALL)), changes)


def small_params(**changes: Any) -> Params:
    """`small_values`, validated."""
    return Params.model_validate(small_values(**changes))


def small_train(**changes: Any) -> TrainParams:
    """The small training settings (those of `train`), with `changes`."""
    return TrainParams.model_validate(small_values(train=changes)["train"])


def tiny_settings(values: dict[str, Any]) -> None:
    """Shrink params.yaml values to SMALL (for edit_params)."""
    deep_update(values, copy.deepcopy(SMALL))


def make_project(root: Path) -> Path:
    """A git + DVC repository holding the project's pipeline and a tiny class-folder source."""
    repo = root / "project"
    repo.mkdir()
    for name in PROJECT_FILES:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, repo / name)
    (repo / ".dvc").mkdir()
    for name in DVC_FILES:
        source = PROJECT_ROOT / ".dvc" / name
        if source.is_dir():
            shutil.copytree(source, repo / ".dvc" / name)
        else:
            shutil.copy2(source, repo / ".dvc" / name)
    if PLOTS_TEMPLATE.is_file():  # as set-up writes it, and names it in .dvc/config.local
        (repo / PLOTS_TEMPLATE.relative_to(PROJECT_ROOT)).parent.mkdir(parents=True)
        shutil.copy2(PLOTS_TEMPLATE, repo / PLOTS_TEMPLATE.relative_to(PROJECT_ROOT))
        use_template(repo)
    write_class_folder(repo / "fixture", "tar.gz", per_class_train=5, per_class_test=2)
    edit_params(repo, tiny_settings)
    (repo / ".gitignore").write_text((repo / ".gitignore").read_text() + "/fixture/\n")
    run_command(["git", "init", "-q", "-b", "main"], repo)
    run_command(["git", "config", "user.email", "tests@example.com"], repo)
    run_command(["git", "config", "user.name", "tests"], repo)
    run_command(["git", "add", "-A"], repo)
    run_command(["git", "commit", "-qm", "baseline"], repo)
    return repo


def client_for(repo: Path) -> MlflowClient:
    """The MLflow client of a project's own store."""
    return MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")


def runs_by_name(repo: Path, experiment: str = "bn-cifar10") -> dict[str, list[Run]]:
    """A project's MLflow runs by run name, oldest first."""
    client = client_for(repo)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    runs: dict[str, list[Run]] = {}
    for run in client.search_runs([found.experiment_id], order_by=["start_time ASC"]):
        runs.setdefault(run.info.run_name, []).append(run)
    return runs


@pytest.fixture(autouse=True)
def fresh_mlflow_state() -> Iterator[None]:
    """MLflow keeps its tracking URI (writing it to MLFLOW_TRACKING_URI too) and its active
    run for the whole process: each test leaves both as it found them, so that tests sharing
    a worker do not log to each other's stores."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # MLflow's reset: the environment's
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh project repository, shared by the tests of one module."""
    return make_project(tmp_path_factory.mktemp("repo"))


def wait_for_health(url: str, server: subprocess.Popen[bytes], seconds: float = 120) -> None:
    """Wait until the `mlflow server` process answers /health; fail if it exits first."""
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


# Stores and bookkeeping that no user restores by hand.
NOT_WORKSPACE = (".git", ".dvc", "mlflow.db", "mlflow.db.lock", "mlartifacts")
# README's recovery after a failed or unwanted `dvc repro` (docs/troubleshooting.md).
RECOVERY = ["tools/restore.sh"]


def workspace(repo: Path) -> dict[str, str]:
    """sha256 of every file of the workspace, by path."""
    return {
        str(path.relative_to(repo)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(repo.rglob("*"))
        if path.is_file() and path.relative_to(repo).parts[0] not in NOT_WORKSPACE
    }


def trained_project(root: Path, stage: str) -> Path:
    """A fresh project in `root` with `dvc repro <stage>` done and everything committed."""
    repo = make_project(root)
    dvc(repo, "repro", stage)
    run_command(["git", "add", "-A"], repo)
    run_command(["git", "commit", "-qm", "trained"], repo)
    return repo


@dataclass
class Server:
    """A loopback HTTP server over one folder, counting the requests it answers."""

    root: Path
    url: str
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """Serve tmp_path/served on 127.0.0.1 at a port the OS picks."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output quiet

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Server(root, f"http://127.0.0.1:{httpd.server_address[1]}", requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


# Tiny data and settings shared by the training and tuning tests.


def tiny_signal_data(seed: int = 0, n: int = 64) -> TrainingData:
    """Noise with a learnable corner per class: 64 training and 20 validation images."""
    from pipeline.training.inputs import TrainingData

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.normal(size=(n, 32, 32, 3)).astype(np.float32)
    images[:, :4, :4, 0] += labels[:, None, None] / 3  # a learnable signal
    return TrainingData(images, labels.astype(np.uint8), images[:20], labels[:20].astype(np.uint8))


def tiny_train_settings(**changes: object) -> TrainParams:
    """The small training settings at batch 16: 4 steps per epoch of tiny_signal_data."""
    return small_train(**{"batch_size": 16, **changes})


TUNING_VARIANT = "plain"  # the variant of the tuning tests: relu + Adam, which learns fast


def tiny_colour_data(n_train: int = 40, n_val: int = 20) -> TrainingData:
    """Noisy images with one colour per class: learnable in a couple of epochs."""
    from pipeline.training.inputs import TrainingData

    palette = np.random.default_rng(1234).normal(size=(10, 3)) * 1.5

    def images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 10
        noise = 0.5 * np.random.default_rng(seed).normal(size=(n, 32, 32, 3))
        x = (palette[labels][:, None, None, :] + noise).astype(np.float32)
        return x, labels.astype(np.uint8)

    return TrainingData(*images(n_train, 0), *images(n_val, 1))


def tiny_tuning_values(**tune: Any) -> dict[str, Any]:
    """The small params (2 epochs, batch 8) for a few-second trial of 32 images."""
    return small_values(
        seed=3,
        train={"augmentation": {"shear_degrees": 0.0, "zoom": 0.0, "horizontal_flip": False}},
        # relu + Adam learns the colours in two epochs of 4 steps (sigmoid, or BatchNormalization
        # with its moving statistics barely updated, stays at chance there): studies rank rates.
        variants={TUNING_VARIANT: {"batch_norm": False, "activation": "relu", "optimizer": "adam"}},
        # No pruner unless a test sets one: three trials then complete, whatever their rates.
        # Nor a first trial at train.learning_rate unless a test asks: trials are the ones
        # a test enqueues or the sampler draws.
        tune={
            "n_trials": 3,
            "subset": 32,
            "lr_low": 1e-4,
            "lr_high": 1e-1,
            "try_default_first": False,
            "pruner": {"kind": "none"},
            **tune,
        },
    )


def tiny_tuning_params(**tune: Any) -> Params:
    """`tiny_tuning_values`, validated."""
    return Params.model_validate(tiny_tuning_values(**tune))


def write_tuning_project(root: Path, **tune: Any) -> Path:
    """A folder with params.yaml and a prepared dataset, as `normalize` leaves it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_tuning_values(**tune), sort_keys=False))
    data = tiny_colour_data()
    (root / "data/prepared").mkdir(parents=True, exist_ok=True)
    np.savez(
        root / "data/prepared/cifar10.npz",
        x_train=data.x_train,
        y_train=data.y_train,
        x_val=data.x_val,
        y_val=data.y_val,
        x_test=data.x_val,
        y_test=data.y_val,
        class_names=np.array([f"class{index}" for index in range(10)]),
    )
    return root


def tuning_study_spec(params: Params, data: TrainingData) -> StudySpec:
    """The spec of the test variant's study on `data`."""
    from pipeline.tuning.data import data_digest

    return StudySpec(
        TUNING_VARIANT,
        params.variant(TUNING_VARIANT),
        params.tune,
        params.seed,
        data_digest(data),
    )


def load_tuning_study(storage: str, params: Params, data: TrainingData) -> optuna.Study:
    """The study `run_study` works on, read back through Optuna's API."""
    name = tuning_study_spec(params, data).name
    return optuna.load_study(study_name=name, storage=open_storage(storage))
