"""What MLflow records of a study: one parent run per worker session, opened at its first
trial, and a nested child run per trial with its epochs, settings, state and value."""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import numpy as np
import optuna
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from optuna.trial import TrialState

from pipeline.config.params import Params
from pipeline.tracking import names, store
from pipeline.tracking.keras_callbacks import MlflowEpochMetrics
from pipeline.tuning.spec import PARAM, StudySpec, pruner_settings
from pipeline.tuning.storage import describe_storage, storage_kind
from pipeline.tuning.summary import StudySummary

log = logging.getLogger(__name__)


class TuningRuns:
    """The MLflow runs of one worker session: a parent run, opened at the session's first
    trial, and one nested child run per trial."""

    def __init__(
        self,
        params: Params,
        spec: StudySpec,
        storage: str,
        n_trials: int,
        tracking_uri: str | None = None,
    ) -> None:
        self.params = params
        self.tracking_uri = tracking_uri
        self.spec = spec
        self.storage = storage
        self.n_trials = n_trials
        self.client: MlflowClient | None = None
        self.experiment_id = ""
        self.parent_id: str | None = None

    def _tags(self) -> dict[str, str]:
        tags = store.run_tags(self.spec.variant, self.spec.data_digest, self.spec.seed)
        tags.pop(names.DATASET_DIGEST_TAG)  # training runs mean the source archive's digest by it
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
            self.experiment_id = store.connect(self.params.mlflow.experiment, self.tracking_uri)
            self.client = MlflowClient()
            run = self.client.create_run(
                self.experiment_id, run_name=f"tune-{self.spec.variant}", tags=self._tags()
            )
            self.parent_id = run.info.run_id
            settings = store.flat_params(
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
                **store.process_tags(),
                names.VARIANT_TAG: self.spec.variant,
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
                **store.flat_params(self.params, self.spec.variant, self.params.seed, settings),
                "optuna.study": self.spec.name,
                "optuna.trial_number": trial.number,
            },
        )
        self.client.set_tag(run_id, "optuna_trial_state", state.name)
        if value is not None:
            self.client.log_metric(run_id, "study/objective", value)
        self.client.set_terminated(run_id, status)

    def mark_state(self, run_id: str, state: TrialState) -> None:
        """Correct a closed child run's trial state (another worker failed the trial)."""
        assert self.client is not None
        self.client.set_tag(run_id, "optuna_trial_state", state.name)

    def finish(self, summary: StudySummary | None, study: optuna.Study, status: str) -> None:
        """Record the study's result and plots in the parent run, and close it."""
        if self.client is None or self.parent_id is None:
            return  # this session ran no trial: nothing to record
        if summary is not None:
            metrics: dict[str, float | None] = {
                "n_complete": summary.complete,
                "n_pruned": summary.pruned,
                "n_failed": summary.failed,
                "n_abandoned": summary.abandoned,
                "epochs_trained": summary.epochs_trained,
                "epochs_unpruned": summary.epochs_unpruned,
                "trial_seconds": summary.trial_seconds,
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

        from pipeline.records.figures import plt  # headless, as every figure of the pipeline

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            figures = {
                "optimization_history.png": plots.plot_optimization_history(study),
                "learning_rate_slice.png": plots.plot_slice(study, params=[PARAM]),
            }
        for name, axes in figures.items():
            figure = np.asarray(axes, dtype=object).flat[0].figure
            self.client.log_figure(self.parent_id, figure, name)
            plt.close(figure)


def _log_params(client: MlflowClient, run_id: str, values: dict[str, Any]) -> None:
    # log_batch splits them into MLflow's batches of at most 100 params itself.
    client.log_batch(run_id, params=[Param(key, str(value)) for key, value in values.items()])
