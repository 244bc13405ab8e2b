"""A grid worker: claims waiting cells one at a time and runs each, until no cell is waiting
or running. Any number of workers, on one machine or many, share one grid.

Each claimed cell beats (Optuna's heartbeat on SQL storages, the journal's beat otherwise).
A worker that dies mid-cell stops beating; the next worker to look for a cell fails the
silent trial and enqueues the cell again (Optuna's RetryHeartbeatStaleTrialCallback, at most
twice), and marks KILLED the MLflow run the dead worker left RUNNING. A worker with nothing
left to claim waits while other cells run, so that a cell whose worker died is still taken.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from pipeline.common.errors import PipelineError, TrainingDiverged
from pipeline.config.layout import Stores
from pipeline.config.params import Params
from pipeline.grids.lineage import DataDigests, check_lineage, current_lineage
from pipeline.grids.stages import run_cell
from pipeline.grids.study import (
    DIVERGED_ATTR,
    ERROR_ATTR,
    RUN_ATTR,
    WORKER_ATTR,
    Declaration,
    cell_of,
    open_cells,
    suggest_cell,
)
from pipeline.tracking import names
from pipeline.tuning.storage import (
    Heartbeat,
    fail_stale_journal_trials,
    has_own_heartbeat,
    retry_stale_trial,
    trial_heartbeat,
)

log = logging.getLogger(__name__)

MAX_FAILURES_IN_A_ROW = 3
POLL_SECONDS = 5  # how often a worker with nothing to claim looks again


@dataclass
class WorkerReport:
    """What one worker did."""

    done: int = 0
    diverged: int = 0
    failed: int = 0

    def describe(self) -> str:
        return f"{self.done} done, {self.diverged} diverged, {self.failed} failed"


class GridWorker:
    """Claims and runs the cells of one grid from one process."""

    def __init__(
        self,
        name: str,
        study: optuna.Study,
        storage: optuna.storages.BaseStorage,
        declaration: Declaration,
        stores: Stores,
        threads: int,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self.name = name
        self.study = study
        self.storage = storage
        self.declaration = declaration
        self.stores = stores
        self.threads = threads
        self.heartbeat = heartbeat or Heartbeat()
        self.digests = DataDigests()
        self.base = Params.model_validate(declaration.base)
        self.identity = f"{socket.gethostname()}:{os.getpid()}"

    def check_lineage(self) -> None:
        """Refuse unless this checkout has the grid's commit and data."""
        current = current_lineage(self.stores.root, self.base, self.digests)
        check_lineage(self.declaration.lineage, current, self.name)

    def work(self) -> WorkerReport:
        """Run cells until none is waiting or running."""
        report = WorkerReport()
        failures_in_a_row = 0
        while True:
            self.check_lineage()  # the checkout may have moved since the last cell
            self.fail_stale_cells()
            trial = self.claim()
            if trial is None:
                waiting, running = open_cells(self.study)
                if not waiting and not running:
                    return report
                log.info("no cell to claim; %d running elsewhere, waiting for them", running)
                time.sleep(min(POLL_SECONDS, self.heartbeat.interval_seconds))
                continue
            state = self.run(trial)
            if state == TrialState.FAIL:
                report.failed += 1
                failures_in_a_row += 1
                if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                    raise PipelineError(
                        f"{failures_in_a_row} cells in a row failed (last: "
                        f"{trial.user_attrs.get(ERROR_ATTR)}); fix the cause and start the "
                        "worker again: failed cells are listed by `python -m pipeline.grid "
                        f"status {self.name}`"
                    )
                continue
            failures_in_a_row = 0
            if state == TrialState.PRUNED:
                report.diverged += 1
            else:
                report.done += 1

    def fail_stale_cells(self) -> None:
        """Fail the cells whose worker stopped beating, and enqueue them again."""
        if has_own_heartbeat(self.storage):
            with warnings.catch_warnings():  # Optuna marks it experimental, and says so per call
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
        else:
            fail_stale_journal_trials(self.study, self.storage, self.heartbeat)

    def claim(self) -> optuna.Trial | None:
        """The first waiting cell this worker wins, RUNNING now; None when none is waiting.

        `Study.ask` would take a waiting trial the same way, but creates a new, sampled one
        when none is left, which a grid must never run; so the queue is popped here as
        `Study.ask` pops it, through the storage's own exactly-once state change.
        """
        study_id = self.storage.get_study_id_from_name(self.name)
        for waiting in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(
                study_id, waiting.number
            )
            try:
                if self.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    return optuna.Trial(self.study, trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker claimed and finished it meanwhile
        return None

    def run(self, trial: optuna.Trial) -> TrialState:
        """Run the claimed cell and record how it ended; returns the trial's state."""
        frozen = self.study.get_trials(deepcopy=False)[trial.number]
        cell = cell_of(frozen)
        log.info(
            "grid %s: cell %d (%s), trial %d", self.name, cell.number, cell.describe(), trial.number
        )
        try:
            suggest_cell(trial, cell, self.declaration)
            trial.set_user_attr(WORKER_ATTR, self.identity)
            self.close_dead_runs(cell.number)
            with trial_heartbeat(trial, self.heartbeat, self.storage):
                result = run_cell(self.declaration.base, cell, self.name, self.stores, self.threads)
        except TrainingDiverged as error:
            trial.set_user_attr(DIVERGED_ATTR, str(error)[:1000])
            self.study.tell(trial, state=TrialState.PRUNED)
            log.warning("cell %d diverged: %s", cell.number, error)
            return TrialState.PRUNED
        except PipelineError as error:
            return self._failed(trial, cell.number, str(error))
        except Exception as error:
            log.debug("cell %d traceback", cell.number, exc_info=True)
            return self._failed(trial, cell.number, f"{type(error).__name__}: {error}")
        except KeyboardInterrupt:
            # Stopped by its user: the cell goes back to the queue for another worker.
            self.study.tell(trial, state=TrialState.FAIL)
            retry_stale_trial()(self.study, self.study.get_trials(deepcopy=False)[trial.number])
            raise
        trial.set_user_attr(RUN_ATTR, result.run_id)
        self.study.tell(trial, result.test_accuracy)
        log.info("cell %d: test accuracy %.4f", cell.number, result.test_accuracy)
        return TrialState.COMPLETE

    def _failed(self, trial: optuna.Trial, number: int, message: str) -> TrialState:
        trial.set_user_attr(ERROR_ATTR, message[:1000])
        self.study.tell(trial, state=TrialState.FAIL)
        log.error("cell %d failed: %s", number, message)
        return TrialState.FAIL

    def close_dead_runs(self, cell_number: int) -> None:
        """Mark KILLED the MLflow runs of this cell left RUNNING: a cell is claimed again only
        after its worker died, which could not end its run."""
        client = MlflowClient(tracking_uri=self.stores.tracking_uri)
        experiment = client.get_experiment_by_name(self.base.mlflow.experiment)
        if experiment is None:
            return
        query = (
            f"attributes.status = 'RUNNING' and tags.`{names.GRID_TAG}` = '{self.name}' "
            f"and tags.`{names.GRID_CELL_TAG}` = '{cell_number}'"
        )
        for run in client.search_runs([experiment.experiment_id], query):
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning(
                "MLflow run %s of cell %d was left running: marked KILLED",
                run.info.run_id,
                cell_number,
            )
