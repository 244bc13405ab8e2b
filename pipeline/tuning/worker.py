"""A worker: runs trials of one study with `Study.optimize` until the study holds `n_trials`
finished (COMPLETE or PRUNED) trials. Any number of workers, in processes or on machines
sharing the storage, cooperate on one study.

Optuna's MaxTrialsCallback stops each worker once enough trials have finished; workers that
started trials at the same moment may finish a few beyond `n_trials` (at most one per other
worker), all of which count. A trial whose training raised is FAIL and replaced; three
in a row stop the worker with the last error.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from pipeline.common.errors import PipelineError
from pipeline.config.params import Params
from pipeline.config.train_params import TrainParams
from pipeline.training.bn_statistics import bn_statistics_lag
from pipeline.training.inputs import TrainingData, steps_per_epoch
from pipeline.tuning.data import data_digest
from pipeline.tuning.objective import Objective
from pipeline.tuning.runs import TuningRuns
from pipeline.tuning.spec import (
    OBJECTIVE,
    PARAM,
    StudySpec,
    open_study,
    trial_sampler,
)
from pipeline.tuning.storage import (
    Heartbeat,
    describe_storage,
    fail_stale_journal_trials,
    journal_heartbeat,
    open_storage,
)
from pipeline.tuning.summary import ERROR_ATTR, FINISHED, StudySummary, summarize

log = logging.getLogger(__name__)

MAX_FAILURES_IN_A_ROW = 3


class TrackedTrial:
    """The function `Study.optimize` calls for each trial: trains it (the Objective) inside
    its MLflow child run and, on a journal, its heartbeat."""

    def __init__(
        self,
        objective: Objective,
        runs: TuningRuns,
        spec: StudySpec,
        storage: optuna.storages.BaseStorage,
        heartbeat: Heartbeat,
    ) -> None:
        self.objective = objective
        self.runs = runs
        self.spec = spec
        self.storage = storage
        self.heartbeat = heartbeat
        self.last_trial: int | None = None  # the latest trial's number, and its MLflow run
        self.last_run: str | None = None
        # A user error of training (not a divergence, which prunes): every trial would meet
        # it again, so the worker stops and the stage reports it as it is.
        self.user_error: PipelineError | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        # Sampled when the objective suggests the rate, with this trial's own seed.
        trial.study.sampler = trial_sampler(self.spec.tune.sampler_seed, trial.number)
        self.last_trial = trial.number
        run_id = self.last_run = self.runs.start_trial(trial.number)
        state, value, status = TrialState.FAIL, None, "FAILED"
        try:
            with journal_heartbeat(trial, self.heartbeat, self.storage):
                value = self.objective(trial, [self.runs.epoch_metrics(run_id)])
            state, status = TrialState.COMPLETE, "FINISHED"
            return value
        except optuna.TrialPruned:
            state, status = TrialState.PRUNED, "FINISHED"
            raise
        except PipelineError as error:
            trial.set_user_attr(ERROR_ATTR, f"{type(error).__name__}: {error}"[:1000])
            self.user_error = error
            trial.study.stop()
            raise
        except Exception as error:
            trial.set_user_attr(ERROR_ATTR, f"{type(error).__name__}: {error}"[:1000])
            log.debug("trial %d traceback", trial.number, exc_info=True)
            raise
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self.runs.finish_trial(run_id, trial, state, value, status)


class StaleJournalTrials:
    """Before each trial is asked for, fails the journal's stale trials and queues their
    rates again (Optuna does so itself on SQL storages); a callback runs before the next ask."""

    def __init__(self, storage: optuna.storages.BaseStorage, heartbeat: Heartbeat) -> None:
        self.storage = storage
        self.heartbeat = heartbeat

    def __call__(self, study: optuna.Study, trial: FrozenTrial | None = None) -> None:
        fail_stale_journal_trials(study, self.storage, self.heartbeat)


class FailureStreak:
    """Stops the worker after `limit` trials in a row whose training raised."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.last_error = ""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and ERROR_ATTR in trial.user_attrs:
            self.count += 1
            self.last_error = str(trial.user_attrs[ERROR_ATTR])
            if self.count >= self.limit:
                study.stop()
        else:
            self.count = 0

    @property
    def tripped(self) -> bool:
        return self.count >= self.limit


class ProgressLog:
    """Logs each finished trial with where the study stands."""

    def __init__(self, n_trials: int, storage: str, epochs: int) -> None:
        self.n_trials = n_trials
        self.storage = storage
        self.epochs = epochs

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        outcome = (
            f"{OBJECTIVE} {trial.value:.4f}"
            if trial.state == TrialState.COMPLETE
            else trial.state.name
        )
        summary = summarize(study, self.n_trials, self.storage, self.epochs)
        log.info(
            "trial %d: learning rate %.4g -> %s; %s",
            trial.number,
            trial.params.get(PARAM, math.nan),
            outcome,
            summary.describe(),
        )


def run_study(
    params: Params,
    variant: str,
    data: TrainingData,
    n_trials: int,
    storage: str,
    tracking_uri: str | None = None,
    heartbeat: Heartbeat | None = None,
) -> StudySummary:
    """Run or continue the variant's study until it has `n_trials` finished trials, tracked
    in the MLflow store `tracking_uri` (default: the environment's)."""
    heartbeat = heartbeat or Heartbeat()
    settings = params.variant(variant)
    spec = StudySpec(variant, settings, params.tune, params.seed, data_digest(data))
    optuna_storage = open_storage(storage, heartbeat)
    study = open_study(spec, optuna_storage)
    shown = describe_storage(storage)
    log.info("%s: study %s in %s, %d finished trial(s) wanted", variant, spec.name, shown, n_trials)
    advice = no_learning_advice(settings, len(data.y_train))
    runs = TuningRuns(params, spec, storage, n_trials, tracking_uri)
    trial = TrackedTrial(
        Objective(data, settings, params.seed, params.tune), runs, spec, optuna_storage, heartbeat
    )
    streak = FailureStreak(MAX_FAILURES_IN_A_ROW)
    stale = StaleJournalTrials(optuna_storage, heartbeat)
    callbacks: list[Any] = [
        MaxTrialsCallback(n_trials, states=FINISHED),
        streak,
        stale,
        ProgressLog(n_trials, shown, settings.epochs),
    ]
    try:
        while len(study.get_trials(deepcopy=False, states=FINISHED)) < n_trials:
            stale(study)
            try:
                study.optimize(trial, callbacks=callbacks, catch=(Exception,), gc_after_trial=True)
            except (ValueError, AssertionError):
                # Optuna could not record a trial that another worker had failed meanwhile
                # (its heartbeat looked stale): the result is lost, the worker goes on.
                # Optuna 5 raises ValueError there, then AssertionError("Should not reach.")
                # from its own clean-up; both are this case only if the trial is FAIL.
                if not failed_by_another_worker(study, trial.last_trial):
                    raise
                log.warning("trial %s was failed by another worker; going on", trial.last_trial)
                if trial.last_run is not None:
                    runs.mark_state(trial.last_run, TrialState.FAIL)
                continue
            if trial.user_error is not None:
                raise trial.user_error
            if streak.tripped:
                raise PipelineError(
                    f"{streak.count} trials in a row failed (last: {streak.last_error}); fix "
                    "the cause and rerun: finished trials are kept"
                )
    except KeyboardInterrupt:
        runs.finish(None, study, "KILLED")
        raise
    except BaseException:
        runs.finish(None, study, "FAILED")
        raise
    summary = summarize(study, n_trials, shown, settings.epochs, advice)
    runs.finish(summary, study, "FINISHED")
    return summary


def failed_by_another_worker(study: optuna.Study, number: int | None) -> bool:
    """Whether trial `number`, which this worker ran, is FAIL in the storage."""
    if number is None:
        return False
    return study.get_trials(deepcopy=False)[number].state == TrialState.FAIL


def no_learning_advice(settings: TrainParams, n_train_images: int) -> str:
    """What to change when every trial stays at chance, as far as the settings explain it."""
    steps = settings.epochs * steps_per_epoch(settings, n_train_images)
    lag = bn_statistics_lag(settings, steps)
    if lag is not None:
        return f"Each trial trains {n_train_images} images: {lag}"
    return ""
