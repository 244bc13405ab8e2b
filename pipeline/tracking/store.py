"""MLflow: where the store is, how runs are named, tagged and linked."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.data.numpy_dataset import from_numpy
from mlflow.exceptions import MlflowException

from pipeline.common.errors import PipelineError
from pipeline.common.files import array_digest, exclusive_lock
from pipeline.config.layout import Stores
from pipeline.config.params import Params
from pipeline.config.train_params import TrainParams
from pipeline.tracking import names

log = logging.getLogger(__name__)

ARTIFACTS_FOLDER = "mlartifacts"
# How PostgreSQL and SQLite, through an MLflow server or not, word a unique-key collision.
DUPLICATE_KEY_MARKERS = ("UniqueViolation", "duplicate key value", "UNIQUE constraint failed")
# `mlflow ui` opens an experiment of this kind on its training runs, not the GenAI view.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else an SQLite store at the project root."""
    return Stores.from_environment().tracking_uri


def connect(experiment_name: str, uri: str | None = None) -> str:
    """Point MLflow at the store `uri` (default: `tracking_uri()`) and the experiment;
    returns the experiment id.

    A new experiment keeps its artifacts beside the SQLite store (not in the working
    directory, which is a throw-away copy under `dvc exp run`).
    """
    uri = uri or tracking_uri()
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    try:
        with _store_lock(uri):
            experiment = mlflow.get_experiment_by_name(experiment_name)
            if experiment is not None and experiment.lifecycle_stage == "deleted":
                raise PipelineError(
                    f"the MLflow experiment {experiment_name!r} is deleted (in the trash of "
                    f"{uri}): restore it (`mlflow experiments restore --experiment-id "
                    f"{experiment.experiment_id}`) or set mlflow.experiment to another name"
                )
            if experiment is not None:
                close_orphaned_runs(experiment.experiment_id)
                if not EXPERIMENT_KIND.items() <= experiment.tags.items():
                    # Experiments made before the kind was set open in the GenAI view.
                    mlflow.MlflowClient().set_experiment_tag(
                        experiment.experiment_id, *next(iter(EXPERIMENT_KIND.items()))
                    )
                return experiment.experiment_id
            location = None
            if uri.startswith("sqlite:///"):
                store = Path(uri.removeprefix("sqlite:///"))
                location = (store.resolve().parent / ARTIFACTS_FOLDER).as_uri()
            return mlflow.create_experiment(
                experiment_name, artifact_location=location, tags=EXPERIMENT_KIND
            )
    except MlflowException as error:
        # Another process (a parallel tuning worker) may have created it a moment ago.
        experiment = mlflow.get_experiment_by_name(experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        raise PipelineError(
            f"MLflow store {uri} is not usable ({error.message.splitlines()[0]}); "
            "check MLFLOW_TRACKING_URI or delete a corrupt mlflow.db"
        ) from error


# MLflow retries a failed request 7 times with a backoff factor of 2 and a 120 s timeout by
# default: about 4 minutes per call when a server is gone, and a stage makes a call per epoch.
# These bound it to about 15 s per call when the server refuses connections (sleeps of 0, 4
# and 8 s plus up to 1 s of jitter each) and about 2.5 min when it stops answering (4 tries of
# 30 s); a stage that loses its server makes two such calls (the epoch's metrics, the run's
# end). Each variable the user sets wins. docs/troubleshooting.md states the same bounds.
HTTP_RETRY_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def check_server(uri: str | None = None) -> None:
    """Fail fast when the store is a tracking server that does not answer; writes nothing.
    Bounds MLflow's retries for the rest of the stage, so a server lost later fails it soon."""
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        for variable, value in HTTP_RETRY_BOUNDS.items():
            os.environ.setdefault(variable, value)
        _check_server(uri)


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """One process at a time while a local SQLite store is created or its experiment made.

    Processes started together would otherwise race to create the store's tables (a
    half-migrated store stays broken). A remote server serializes by itself.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    with exclusive_lock(Path(uri.removeprefix("sqlite:///") + ".lock")):
        yield


def _check_server(uri: str) -> None:
    """Fail fast, in one line, when a tracking server does not answer."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10):
            pass
    except (urllib.error.URLError, OSError) as error:
        raise PipelineError(
            f"MLflow tracking server {uri} is unreachable ({error}); start it "
            "(`mlflow server --host 127.0.0.1 --port 5000`) or unset MLFLOW_TRACKING_URI "
            "to use the local store"
        ) from error


def log_dataset(x: np.ndarray, y: np.ndarray, split: str, source: str, context: str) -> None:
    """Log the arrays a run used as an MLflow dataset input of the active run: their real
    shape and schema, and a digest of their bytes, which changes with the split, the
    subset and the normalization."""
    dataset = from_numpy(
        x, targets=y, source=source, name=f"cifar10-{split}", digest=array_digest(x, y)[:32]
    )
    try:
        mlflow.log_input(dataset, context=context)
    except MlflowException as error:
        # MLflow's SQL store inserts a dataset it has not seen without a lock: two runs logging
        # the same new dataset at the same moment (grid or queue workers starting together)
        # collide on its unique key, and the loser's insert fails. The dataset exists now.
        if not any(marker in str(error) for marker in DUPLICATE_KEY_MARKERS):
            raise
        log.info("dataset %s was being logged by another run; logging it again", dataset.name)
        mlflow.log_input(dataset, context=context)


def flat_params(params: Params, variant: str, seed: int, settings: TrainParams) -> dict[str, Any]:
    """Every effective hyperparameter of a run, flattened to dotted keys for MLflow."""
    flat: dict[str, Any] = {"variant": variant, "seed": seed, "data.seed": params.seed}
    flat.update(flatten("train", settings.model_dump()))
    flat.update(flatten("data", params.data.model_dump(exclude={"url", "md5"})))
    flat["normalize.method"] = params.normalize.method
    return flat


def flatten(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    """Nested sections as one level of dotted keys under `prefix`."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(f"{prefix}.{key}", value))
        else:
            flat[f"{prefix}.{key}"] = value
    return flat


def run_tags(variant: str, dataset_digest: str, seed: int) -> dict[str, str]:
    """Tags that tie a run to its variant, data, code and DVC experiment."""
    return {
        names.VARIANT_TAG: variant,
        names.DATASET_DIGEST_TAG: dataset_digest,
        names.SEED_TAG: str(seed),
        **source_tags(),
    }


@contextlib.contextmanager
def killed_on_interrupt() -> Iterator[None]:
    """End the active run as KILLED when the stage is interrupted (Ctrl-C, SIGTERM); MLflow's
    own context manager would record FAILED, as for a crash."""
    try:
        yield
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise


def check_run_usable(run_id: str, way_out: str) -> None:
    """Refuse, in one line, to reopen a run MLflow's UI or CLI deleted (in the trash, or gone
    after `mlflow gc`); `way_out` says what else the user can do."""
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise PipelineError(
            f"the MLflow run {run_id} no longer exists in {tracking_uri()} (removed for good, "
            f"as `mlflow gc` does): {way_out}"
        ) from error
    if run.info.lifecycle_stage == "deleted":
        raise PipelineError(
            f"the MLflow run {run_id} ({run.info.run_name}) is deleted (in the trash of "
            f"{tracking_uri()}): restore it (`mlflow runs restore --run-id {run_id}`) or "
            f"{way_out}"
        )


@contextlib.contextmanager
def resumed_run(run_id: str) -> Iterator[mlflow.ActiveRun]:
    """Reopen a finished run to add to it, ending it FINISHED again (KILLED on Ctrl-C).

    The run is first tagged with this process, while it is still FINISHED: otherwise, while
    it is open, a stage starting beside it (a parallel `dvc queue` worker) would see a RUNNING
    run of a process that has exited (the stage that made it) and mark it KILLED.
    """
    client = mlflow.MlflowClient()
    for key, value in process_tags().items():
        client.set_tag(run_id, key, value)
    with mlflow.start_run(run_id=run_id) as run, killed_on_interrupt():
        yield run


def close_orphaned_runs(experiment_id: str) -> None:
    """Mark KILLED the runs that processes on this machine left RUNNING when they died.

    A process killed outright (SIGKILL, out of memory, power loss) cannot end its own run;
    the next stage that connects does, for runs whose process no longer exists. Runs
    started on other machines are left alone: their processes cannot be checked from here.
    """
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{names.HOST_TAG}` = '{host}'",
    )
    for run in runs:
        pid = int(run.data.tags.get(names.PID_TAG, "0"))
        if not pid or _process_exists(pid):
            continue
        # Read the run again now that its process is known to be gone: a run that process
        # ended (or another process took over) since the search must not be overwritten.
        current = client.get_run(run.info.run_id)
        if current.info.status == "RUNNING" and current.data.tags.get(names.PID_TAG) == str(pid):
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning(
                "MLflow run %s (%s) was left running by process %d, which no longer exists: "
                "marked KILLED",
                run.info.run_id,
                run.info.run_name,
                pid,
            )


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def process_tags() -> dict[str, str]:
    """The machine and process of a run, so a run left RUNNING by a dead process is found."""
    return {names.HOST_TAG: socket.gethostname(), names.PID_TAG: str(os.getpid())}


def source_tags() -> dict[str, str]:
    """Tags that tie a run to the code, the DVC experiment and the process that produced it."""
    tags = process_tags()
    commit = _git_commit()
    if commit:
        tags[names.MLFLOW_GIT_COMMIT_TAG] = commit
        tags[names.GIT_COMMIT_TAG] = commit
    for env_name, tag in names.DVC_EXPERIMENT_TAGS.items():
        if os.environ.get(env_name):
            tags[tag] = os.environ[env_name]
    return tags


def _git_commit() -> str | None:
    """The commit being run, or None outside a git repository."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip() or None
