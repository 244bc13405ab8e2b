"""Optuna learning-rate studies: storage, study names, trials, workers and their MLflow runs.

One study per variant and search configuration lives in a persistent storage, so that a
rerun continues it and several workers (processes or machines) share it. A worker runs
trials until the study holds `n_trials` finished (COMPLETE or PRUNED) trials; FAIL trials
(crashes, interruptions, workers that died) do not count and are replaced.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import tempfile
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import optuna
import sqlalchemy
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from optuna_integration import TFKerasPruningCallback

from pipeline import tracking
from pipeline.callbacks import MlflowEpochMetrics
from pipeline.chance import CHANCE_ACCURACY, at_chance
from pipeline.errors import PipelineError
from pipeline.figures import save
from pipeline.files import array_digest, read_npz
from pipeline.layout import project_root
from pipeline.params import Params, TrainParams, TuneParams
from pipeline.sampling import stratified_sample
from pipeline.training import TrainingData, train_model, training_data

log = logging.getLogger(__name__)

PARAM = "learning_rate"
MONITOR = "val_accuracy"
JOURNAL_FILE = "optuna.journal"
JOURNAL_PREFIX = "journal:"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_ATTR = "heartbeat"
MAX_FAILURES_IN_A_ROW = 3


@dataclass(frozen=True)
class Timing:
    """How often a worker marks its trial alive, when it gives up on a silent one, and polls."""

    heartbeat_seconds: float = 30.0
    stale_seconds: float = 300.0
    poll_seconds: float = 5.0


@dataclass(frozen=True)
class StudySummary:
    """Where a study stands: the counts of its trials and its best learning rate so far."""

    study: str
    storage: str
    n_trials: int
    complete: int
    pruned: int
    failed: int
    best_learning_rate: float | None
    best_value: float | None
    best_trial: int | None

    def tuned(self) -> dict[str, Any]:
        """The stage output `tuned.json`: the learning rate to train with, and its origin."""
        if self.best_learning_rate is None:
            raise PipelineError(
                f"study {self.study} has no complete trial ({self.pruned} pruned, "
                f"{self.failed} failed): every learning rate diverged, was pruned or crashed. "
                "Narrow tune.lr_low..tune.lr_high or raise tune.epochs, and rerun"
            )
        if not self.learned():
            raise PipelineError(
                f"study {self.study}: no learning rate learned anything: the best of "
                f"{self.complete} complete trials reached {MONITOR} {self.best_value:.3f}, and "
                f"guessing gets {CHANCE_ACCURACY:.3f}, so the trials cannot rank learning rates. "
                "Make trials longer (raise tune.epochs, or tune.subset; null uses every training "
                "image) and rerun: the study starts afresh under its new name"
            )
        return {
            "learning_rate": self.best_learning_rate,
            "source": "optuna",
            "study": self.study,
            "storage": self.storage,
            "n_trials": self.n_trials,
            "trials": {"complete": self.complete, "pruned": self.pruned, "failed": self.failed},
            "best_value": self.best_value,
            "best_trial": self.best_trial,
            "objective": f"{MONITOR} after the last epoch",
        }

    def learned(self) -> bool:
        """Whether the best trial did better than guessing."""
        # A best trial no better than guessing learned nothing: the trials are too short to
        # rank learning rates, and the first of many tied trials would win by accident.
        return self.best_value is not None and not at_chance(self.best_value)

    def describe(self) -> str:
        """One line for the log."""
        counts = f"{self.complete} complete, {self.pruned} pruned, {self.failed} failed"
        if self.best_trial is None:
            return f"study {self.study}: {counts}; no complete trial yet"
        chance = "" if self.learned() else " (no better than guessing: trials too short)"
        return (
            f"study {self.study}: {counts}; best {MONITOR} {self.best_value:.4f} at learning "
            f"rate {self.best_learning_rate:.4g} (trial {self.best_trial}){chance}"
        )


# ---------------------------------------------------------------------------------------
# Storage


def storage_url(configured: str | None) -> str:
    """The storage to use; relative files (journal or SQLite) are anchored at the project root.

    Anchoring at `project_root()` (DVC_ROOT under `dvc exp run`) puts every experiment,
    queued or not, and every local worker on the same study.
    """
    root = project_root()
    if configured is None:
        return f"{JOURNAL_PREFIX}{root / JOURNAL_FILE}"
    if configured.startswith(JOURNAL_PREFIX):
        path = Path(configured.removeprefix(JOURNAL_PREFIX)).expanduser()
        return f"{JOURNAL_PREFIX}{path if path.is_absolute() else root / path}"
    if configured.startswith("sqlite:///"):
        path_and_query = configured.removeprefix("sqlite:///")
        if path_and_query and not path_and_query.startswith(("/", ":memory:")):
            return f"sqlite:///{root / path_and_query}"
    if configured.startswith("postgresql://"):
        # SQLAlchemy's default PostgreSQL driver is psycopg2; the project installs psycopg 3.
        return "postgresql+psycopg://" + configured.removeprefix("postgresql://")
    return configured


def describe_storage(url: str) -> str:
    """The storage as it may be shown and logged: a journal's path, a URL without password."""
    if url.startswith(JOURNAL_PREFIX):
        return url.removeprefix(JOURNAL_PREFIX)
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return "<unparsable storage URL>"


def storage_kind(url: str) -> str:
    """`journal`, or the database behind an SQLAlchemy URL (`sqlite`, `postgresql`, ...)."""
    if url.startswith(JOURNAL_PREFIX):
        return "journal"
    try:
        return sqlalchemy.engine.make_url(url).get_backend_name()
    except sqlalchemy.exc.ArgumentError:
        return "unknown"


def open_storage(url: str) -> BaseStorage:
    """Open (creating if needed) a journal file or an SQLAlchemy database as Optuna storage."""
    shown = describe_storage(url)
    if url.startswith(JOURNAL_PREFIX):
        path = Path(url.removeprefix(JOURNAL_PREFIX))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # The default symlink lock serialises appends between local processes, and it
            # is what the `optuna` CLI and optuna-dashboard use when they open this file.
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as error:
            raise PipelineError(
                f"cannot open the Optuna journal {shown}: {error.strerror}; fix the folder's "
                "permissions or point tune.storage elsewhere"
            ) from error
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if storage_kind(url) == "sqlite":
        # Several local workers write to one file: wait for a lock instead of failing.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    try:
        return _rdb_storage(url, engine_kwargs)
    except ImportError as error:
        raise PipelineError(
            f"no database driver for the Optuna storage {shown} ({error}); install it into "
            "the environment (PostgreSQL: psycopg[binary])"
        ) from error
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PipelineError(
            f"Optuna storage {shown} is not usable ({first_line}); check tune.storage or "
            "--storage, that the database server is up, and the password (PGPASSWORD or "
            "~/.pgpass, never in params.yaml)"
        ) from error


def _rdb_storage(url: str, engine_kwargs: dict[str, Any], retries: int = 4) -> RDBStorage:
    """RDBStorage, retried while another worker is creating the same fresh database's tables
    (workers started together on an empty PostgreSQL race to create them)."""
    for attempt in range(1, retries + 1):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs)
        except sqlalchemy.exc.SQLAlchemyError as error:
            if "already exists" not in str(error):
                raise
            log.info("another worker is creating the Optuna tables; retrying in %d s", attempt)
            time.sleep(attempt)
    return RDBStorage(url, engine_kwargs=engine_kwargs)


# ---------------------------------------------------------------------------------------
# What a study is


# Training settings that do not change what a trial scores: the searched rate, and how a run
# is resourced, probed or checkpointed. Changing them continues the same study.
NOT_A_TRIAL_OUTCOME: dict[str, Any] = {
    "learning_rate": True,
    "resume": True,
    "probe": True,
    "speed": {"intra_op_threads", "inter_op_threads"},
}


@dataclass(frozen=True)
class StudySpec:
    """Everything that defines one study: trials of two specs are not comparable."""

    variant: str
    settings: TrainParams
    tune: TuneParams
    seed: int
    data_digest: str

    def configuration(self) -> dict[str, Any]:
        """The study's defining settings, as stored with it (`optuna studies` shows them)."""
        return {
            "variant": self.variant,
            "seed": self.seed,
            "training": self.settings.model_dump(mode="json", exclude=NOT_A_TRIAL_OUTCOME),
            "search": {
                "lr_low": self.tune.lr_low,
                "lr_high": self.tune.lr_high,
                "epochs": self.tune.epochs,
                "subset": self.tune.subset,
                "sampler_seed": self.tune.sampler_seed,
                "pruner": pruner_settings(self.tune),
                "objective": MONITOR,
                "step": "epochs completed",  # 0-based epochs before: another study
            },
            "data_digest": self.data_digest,
        }

    @property
    def name(self) -> str:
        """`<variant>-lr-<hash of the configuration>`: equal settings find the same study."""
        encoded = json.dumps(self.configuration(), sort_keys=True).encode()
        return f"{self.variant}-lr-{hashlib.sha256(encoded).hexdigest()[:10]}"


def trial_settings(params: Params, variant: str) -> TrainParams:
    """A variant's training settings as trials use them: `tune.epochs` epochs."""
    return params.variant(variant).model_copy(update={"epochs": params.tune.epochs})


def pruner_settings(tune: TuneParams) -> dict[str, Any]:
    """The pruner's kind and only the settings that kind uses."""
    pruner = tune.pruner
    if pruner.kind == "median":
        return {
            "kind": "median",
            "n_startup_trials": pruner.n_startup_trials,
            "n_warmup_steps": pruner.n_warmup_steps,
        }
    if pruner.kind == "hyperband":
        return {
            "kind": "hyperband",
            "min_resource": pruner.min_resource,
            "reduction_factor": pruner.reduction_factor,
        }
    return {"kind": "none"}


class EpochPruning(TFKerasPruningCallback):
    """Optuna's Keras pruning callback, reporting the number of epochs completed as the step.

    The integration reports Keras' 0-based epoch index, which made `n_warmup_steps: 1` let a
    trial run 2 epochs and kept Hyperband's last rung (max_resource = tune.epochs) out of reach.
    """

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_epoch_end(epoch + 1, logs)


def make_pruner(tune: TuneParams) -> optuna.pruners.BasePruner:
    """The configured pruner; steps are epochs completed (1 after the first epoch)."""
    pruner = tune.pruner
    if pruner.kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=pruner.n_startup_trials, n_warmup_steps=pruner.n_warmup_steps
        )
    if pruner.kind == "hyperband":
        if pruner.min_resource > tune.epochs:
            raise PipelineError(
                f"tune.pruner.min_resource ({pruner.min_resource}) exceeds tune.epochs "
                f"({tune.epochs}); lower it or raise tune.epochs"
            )
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_resource,
            max_resource=tune.epochs,
            reduction_factor=pruner.reduction_factor,
        )
    return optuna.pruners.NopPruner()


def trial_sampler(sampler_seed: int, number: int) -> optuna.samplers.TPESampler:
    """A TPE sampler seeded by the study's seed and the trial number.

    One seed per process would make parallel workers propose the same learning rates and
    a resumed study repeat its first proposals; a seed per trial number avoids both and
    keeps a single worker's study reproducible.
    """
    digest = hashlib.sha256(f"{sampler_seed}:{number}".encode()).digest()
    return optuna.samplers.TPESampler(seed=int.from_bytes(digest[:4], "little"))


def open_study(spec: StudySpec, storage: BaseStorage) -> optuna.Study:
    """Create the spec's study, or load it when it exists (a rerun or another worker)."""
    study = optuna.create_study(
        storage=storage,
        study_name=spec.name,
        direction="maximize",
        sampler=trial_sampler(spec.tune.sampler_seed, 0),
        pruner=make_pruner(spec.tune),
        load_if_exists=True,
    )
    if "configuration" not in study.user_attrs:
        study.set_user_attr("configuration", spec.configuration())
    return study


# ---------------------------------------------------------------------------------------
# Data


def required_keys(settings: TrainParams) -> tuple[str, ...]:
    """The arrays of the prepared dataset that tuning reads."""
    keys = ("x_train", "y_train", "x_val", "y_val")
    return (*keys, "x_test", "y_test") if settings.validation_data == "test" else keys


def subset_data(data: TrainingData, size: int | None, seed: int) -> TrainingData:
    """The training images trials see (a stratified, seeded subset) and all validation images."""
    if size is None or size >= len(data.y_train):
        return data
    keep = stratified_sample(data.y_train, size, np.random.default_rng(seed))
    return TrainingData(data.x_train[keep], data.y_train[keep], data.x_val, data.y_val)


def load_tuning_data(
    path: Path, settings: TrainParams, size: int | None, seed: int
) -> TrainingData:
    """Read the prepared dataset once per process and keep only what trials use."""
    arrays = read_npz(path, required_keys(settings))
    return subset_data(training_data(arrays, settings), size, seed)


def data_digest(data: TrainingData) -> str:
    """sha256 of the arrays trials see, so that a study never mixes two datasets."""
    return array_digest(data.x_train, data.y_train, data.x_val, data.y_val)


# ---------------------------------------------------------------------------------------
# One trial


class Objective:
    """Train one trial's model at a sampled learning rate; its value is the last val_accuracy."""

    def __init__(self, data: TrainingData, settings: TrainParams, seed: int, tune: TuneParams):
        self.data = data
        self.settings = settings
        self.seed = seed
        self.tune = tune

    def __call__(self, trial: optuna.trial.BaseTrial, callbacks: list[Any] | None = None) -> float:
        """Train and return the validation accuracy; raises optuna.TrialPruned when pruned."""
        learning_rate = trial.suggest_float(PARAM, self.tune.lr_low, self.tune.lr_high, log=True)
        settings = self.settings.model_copy(update={PARAM: learning_rate})
        pruning = EpochPruning(trial, MONITOR)
        try:
            # Keep only the history: the model must be unreferenced when the session clears.
            result = train_model(self.data, settings, self.seed, [*(callbacks or []), pruning])
            history = result.history
            del result
            accuracy = history[-1][MONITOR]
        except PipelineError as error:
            # train_model's divergence check: a learning rate that blows the loss up is a
            # bad result, not a crash; PRUNED tells the sampler to avoid it (FAIL would not).
            trial.set_user_attr("diverged", str(error))
            raise optuna.TrialPruned(f"diverged: {error}") from error
        finally:
            # One graph per trial would otherwise pile up: memory stays flat across trials.
            keras.backend.clear_session()
            gc.collect()
        if not math.isfinite(accuracy):
            raise optuna.TrialPruned(f"{MONITOR} is {accuracy}")
        return accuracy


class Heartbeat:
    """Marks a running trial alive from a background thread until the block ends.

    Other workers fail a RUNNING trial whose heartbeat stopped (its worker was killed or
    its machine lost), so it neither blocks the study nor counts toward it.
    """

    def __init__(self, trial: optuna.Trial, interval: float) -> None:
        self._trial = trial
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._beat()

    def _beat(self) -> None:
        try:
            self._trial.set_user_attr(HEARTBEAT_ATTR, time.time())
        except Exception as error:  # a missed beat is harmless; a dead worker stops them all
            log.warning("trial %d: heartbeat not recorded (%s)", self._trial.number, error)


def last_seen(trial: FrozenTrial) -> float:
    """When a trial last showed a sign of life (Unix time): its heartbeat or its start."""
    beat = trial.user_attrs.get(HEARTBEAT_ATTR)
    if isinstance(beat, int | float):
        return float(beat)
    return trial.datetime_start.timestamp() if trial.datetime_start else 0.0


# ---------------------------------------------------------------------------------------
# MLflow


class TuningRuns:
    """The MLflow runs of one worker session: a parent run, opened at the session's first
    trial, and one nested child run per trial."""

    def __init__(self, params: Params, spec: StudySpec, storage: str, n_trials: int) -> None:
        self.params = params
        self.spec = spec
        self.storage = storage
        self.n_trials = n_trials
        self.client: MlflowClient | None = None
        self.experiment_id = ""
        self.parent_id: str | None = None

    def _tags(self) -> dict[str, str]:
        tags = tracking.run_tags(self.spec.variant, self.spec.data_digest, self.spec.seed)
        tags.pop("dataset_digest")  # training runs mean the source archive's digest by it
        return {
            **tags,
            "tuning_data_digest": self.spec.data_digest,
            "optuna_study": self.spec.name,
            "optuna_storage": describe_storage(self.storage),
            "optuna_storage_kind": storage_kind(self.storage),
        }

    def parent(self) -> tuple[MlflowClient, str]:
        """The session's parent run, created on first use."""
        if self.client is None or self.parent_id is None:
            self.experiment_id = tracking.connect(self.params.mlflow.experiment)
            self.client = MlflowClient()
            run = self.client.create_run(
                self.experiment_id, run_name=f"tune-{self.spec.variant}", tags=self._tags()
            )
            self.parent_id = run.info.run_id
            settings = tracking.flat_params(
                self.params, self.spec.variant, self.params.seed, self.spec.settings
            )
            settings.pop(f"train.{PARAM}")  # searched, not set
            search = {
                f"tune.{key}": value
                for key, value in self.spec.configuration()["search"].items()
                if key != "pruner"
            }
            pruner = pruner_settings(self.spec.tune)
            _log_params(
                self.client,
                self.parent_id,
                {
                    **settings,
                    **search,
                    **{f"tune.pruner.{key}": value for key, value in pruner.items()},
                    "tune.n_trials": self.n_trials,
                    "optuna.study": self.spec.name,
                },
            )
        return self.client, self.parent_id

    def start_trial(self, number: int) -> str:
        """A child run for trial `number`; returns its run id."""
        client, parent_id = self.parent()
        run = client.create_run(
            self.experiment_id,
            run_name=f"tune-{self.spec.variant}-trial-{number}",
            tags={
                "mlflow.parentRunId": parent_id,
                **tracking.process_tags(),
                "variant": self.spec.variant,
                "optuna_study": self.spec.name,
                "optuna_trial_number": str(number),
            },
        )
        return run.info.run_id

    def epoch_metrics(self, run_id: str) -> MlflowEpochMetrics:
        """The Keras callback that logs a trial's epochs to its child run."""
        assert self.client is not None
        return MlflowEpochMetrics(self.client, run_id)

    def finish_trial(
        self, run_id: str, trial: optuna.Trial, state: TrialState, value: float | None, status: str
    ) -> None:
        """Record a trial's settings, final state and value, and close its child run."""
        assert self.client is not None
        settings = self.spec.settings.model_copy(update=trial.params)
        _log_params(
            self.client,
            run_id,
            {
                **tracking.flat_params(self.params, self.spec.variant, self.params.seed, settings),
                "optuna.study": self.spec.name,
                "optuna.trial_number": trial.number,
            },
        )
        self.client.set_tag(run_id, "optuna_trial_state", state.name)
        if value is not None:
            self.client.log_metric(run_id, "study/objective", value)
        self.client.set_terminated(run_id, status)

    def finish(self, summary: StudySummary | None, study: optuna.Study, status: str) -> None:
        """Record the study's result and plots in the parent run, and close it."""
        if self.client is None or self.parent_id is None:
            return  # this session ran no trial: nothing to record
        if summary is not None:
            metrics: dict[str, float | None] = {
                "n_complete": summary.complete,
                "n_pruned": summary.pruned,
                "n_failed": summary.failed,
            }
            if summary.best_trial is not None:
                metrics.update(
                    best_value=summary.best_value,
                    best_learning_rate=summary.best_learning_rate,
                    best_trial=summary.best_trial,
                )
            timestamp = int(time.time() * 1000)
            self.client.log_batch(
                self.parent_id,
                metrics=[
                    Metric(f"study/{key}", float(value), timestamp, 0)
                    for key, value in metrics.items()
                    if value is not None
                ],
            )
            if summary.complete < 2:
                log.info("fewer than 2 complete trials: no study plots")
            else:
                try:
                    self._log_plots(study)
                except Exception as error:  # the plots are a convenience, the result is not
                    log.warning("study plots not logged: %s: %s", type(error).__name__, error)
        self.client.set_terminated(self.parent_id, status)

    def _log_plots(self, study: optuna.Study) -> None:
        assert self.client is not None and self.parent_id is not None
        from optuna.visualization import matplotlib as plots  # pulls in matplotlib lazily

        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as folder:
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            figures = {
                "optimization_history.png": plots.plot_optimization_history(study),
                "learning_rate_slice.png": plots.plot_slice(study, params=[PARAM]),
            }
            for name, axes in figures.items():
                target = Path(folder) / name
                save(np.asarray(axes, dtype=object).flat[0].figure, target)
                self.client.log_artifact(self.parent_id, str(target))


def _log_params(client: MlflowClient, run_id: str, values: dict[str, Any]) -> None:
    params = [Param(key, str(value)) for key, value in values.items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=params[start : start + 100])


# ---------------------------------------------------------------------------------------
# A worker


class Worker:
    """Runs trials of one study until it holds `n_trials` finished trials."""

    def __init__(
        self,
        study: optuna.Study,
        spec: StudySpec,
        objective: Objective,
        runs: TuningRuns,
        n_trials: int,
        timing: Timing,
    ) -> None:
        self.study = study
        self.spec = spec
        self.objective = objective
        self.runs = runs
        self.n_trials = n_trials
        self.timing = timing

    def run(self) -> int:
        """Work until the study is done; returns how many trials this worker ran.

        Claims are counted before and after asking for a trial (finished trials plus live
        running ones), so that workers started together stop at exactly `n_trials`:
        MaxTrialsCallback checks only after a trial ends, too late to stop the extra ones.
        A worker whose claim is not needed waits for the running trials, in case one fails.
        """
        ran = failures_in_a_row = 0
        waiting_logged = False
        while True:
            finished, live = self._census()
            if finished >= self.n_trials:
                return ran
            if finished + live >= self.n_trials:
                if not waiting_logged:
                    log.info("waiting for %d running trial(s) of other workers", live)
                    waiting_logged = True
                time.sleep(self.timing.poll_seconds)
                continue
            waiting_logged = False
            trial = self.study.ask()
            if self._is_surplus(trial):
                # Another worker asked at the same moment; this trial is one too many.
                trial.set_user_attr("surplus", True)
                self.study.tell(trial, state=TrialState.FAIL)
                continue
            state = self._run_trial(trial)
            ran += 1
            failures_in_a_row = failures_in_a_row + 1 if state == TrialState.FAIL else 0
            if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                raise PipelineError(
                    f"{failures_in_a_row} trials in a row failed (last: "
                    f"{self._last_error(trial)}); fix the cause and rerun: finished trials "
                    "are kept"
                )

    def _census(self) -> tuple[int, int]:
        """(finished trials, live running trials); fails running trials whose worker died."""
        now = time.time()
        finished = live = 0
        for trial in self.study.get_trials(deepcopy=False):
            if trial.state in FINISHED:
                finished += 1
            elif trial.state == TrialState.RUNNING:
                if now - last_seen(trial) <= self.timing.stale_seconds:
                    live += 1
                else:
                    self._fail_abandoned(trial, now)
        return finished, live

    def _fail_abandoned(self, trial: FrozenTrial, now: float) -> None:
        log.warning(
            "trial %d has shown no sign of life for %.0f s (its worker died?): marking it FAIL",
            trial.number,
            now - last_seen(trial),
        )
        # Another worker may mark it first: then there is nothing left to do.
        with contextlib.suppress(ValueError, optuna.exceptions.UpdateFinishedTrialError):
            self.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)

    def _is_surplus(self, trial: optuna.Trial) -> bool:
        """Whether trials numbered before this one already fill the study."""
        now = time.time()
        ahead = sum(
            1
            for other in self.study.get_trials(deepcopy=False)
            if other.number < trial.number
            and (
                other.state in FINISHED
                or (
                    other.state == TrialState.RUNNING
                    and now - last_seen(other) <= self.timing.stale_seconds
                )
            )
        )
        return ahead >= self.n_trials

    def _run_trial(self, trial: optuna.Trial) -> TrialState:
        """Train one trial, tell Optuna its outcome and record it in MLflow."""
        self.study.sampler = trial_sampler(self.spec.tune.sampler_seed, trial.number)
        try:
            run_id = self.runs.start_trial(trial.number)
        except BaseException:
            self._tell(trial, TrialState.FAIL, None)  # not left RUNNING until it looks stale
            raise
        try:
            with Heartbeat(trial, self.timing.heartbeat_seconds):
                state, value = self._evaluate(trial, run_id)
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted")
            self._tell(trial, TrialState.FAIL, None)
            self.runs.finish_trial(run_id, trial, TrialState.FAIL, None, "KILLED")
            raise
        self._tell(trial, state, value)
        self.runs.finish_trial(
            run_id, trial, state, value, "FAILED" if state == TrialState.FAIL else "FINISHED"
        )
        self._log_outcome(trial, state, value)
        return state

    def _evaluate(self, trial: optuna.Trial, run_id: str) -> tuple[TrialState, float | None]:
        try:
            return TrialState.COMPLETE, self.objective(trial, [self.runs.epoch_metrics(run_id)])
        except optuna.TrialPruned as reason:
            log.info("trial %d pruned: %s", trial.number, reason)
            return TrialState.PRUNED, None
        except Exception as error:  # a crashed trial is recorded as FAIL; the study goes on
            log.warning("trial %d failed: %s: %s", trial.number, type(error).__name__, error)
            log.debug("trial %d traceback", trial.number, exc_info=True)
            trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:1000])
            return TrialState.FAIL, None

    def _tell(self, trial: optuna.Trial, state: TrialState, value: float | None) -> None:
        try:
            self.study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as error:
            # Another worker judged this trial abandoned (no heartbeat) and failed it.
            log.warning("trial %d: result not recorded (%s)", trial.number, error)

    def _log_outcome(self, trial: optuna.Trial, state: TrialState, value: float | None) -> None:
        outcome = f"{MONITOR} {value:.4f}" if value is not None else state.name
        summary = summarize(self.study, self.n_trials, self.runs.storage)
        log.info(
            "trial %d: learning rate %.4g -> %s; %s",
            trial.number,
            trial.params.get(PARAM, math.nan),
            outcome,
            summary.describe(),
        )

    @staticmethod
    def _last_error(trial: optuna.Trial) -> str:
        attrs = trial.study.trials[trial.number].user_attrs
        return str(attrs.get("error", "unknown error"))


def summarize(study: optuna.Study, n_trials: int, storage: str) -> StudySummary:
    """Counts of the study's trials and its best one (None while no trial is complete)."""
    counts = Counter(trial.state for trial in study.get_trials(deepcopy=False))
    try:
        best: FrozenTrial | None = study.best_trial
    except ValueError:
        best = None
    return StudySummary(
        study=study.study_name,
        storage=describe_storage(storage),
        n_trials=n_trials,
        complete=counts[TrialState.COMPLETE],
        pruned=counts[TrialState.PRUNED],
        failed=counts[TrialState.FAIL],
        best_learning_rate=float(best.params[PARAM]) if best else None,
        best_value=float(best.value) if best and best.value is not None else None,
        best_trial=best.number if best else None,
    )


def run_study(
    params: Params,
    variant: str,
    data: TrainingData,
    n_trials: int,
    storage: str,
    timing: Timing | None = None,
) -> StudySummary:
    """Run or continue the variant's study until it has `n_trials` finished trials."""
    settings = trial_settings(params, variant)
    spec = StudySpec(variant, settings, params.tune, params.seed, data_digest(data))
    study = open_study(spec, open_storage(storage))
    log.info(
        "%s: study %s in %s, %d finished trial(s) wanted",
        variant,
        spec.name,
        describe_storage(storage),
        n_trials,
    )
    runs = TuningRuns(params, spec, storage, n_trials)
    objective = Objective(data, settings, params.seed, params.tune)
    worker = Worker(study, spec, objective, runs, n_trials, timing or Timing())
    try:
        worker.run()
    except KeyboardInterrupt:
        runs.finish(None, study, "KILLED")
        raise
    except BaseException:
        runs.finish(None, study, "FAILED")
        raise
    summary = summarize(study, n_trials, storage)
    runs.finish(summary, study, "FINISHED")
    return summary
