"""A grid as an Optuna study: its declaration in the study's attributes, its cells as trials.

Every cell is enqueued (`Study.enqueue_trial`) as a WAITING trial holding the cell; workers
claim them exactly once under the storage's own lock (a row lock on PostgreSQL, the log's
order in a journal). Not GridSampler: distributed workers may sample the same point of its
grid twice (its docstring; optuna/optuna#2039).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.common.errors import PipelineError
from pipeline.grids.cells import Cell, cell_params, cross
from pipeline.grids.lineage import Lineage

log = logging.getLogger(__name__)

GRID_ATTR = "grid"  # the study's declaration
CELL_ATTR = "cell"  # each trial's cell
ERROR_ATTR = "error"  # a failed cell's message
DIVERGED_ATTR = "diverged"  # a diverged cell's message
RUN_ATTR = "mlflow_run_id"
WORKER_ATTR = "worker"  # host and process that ran the trial
VALUE_NAME = "test_accuracy"  # a finished cell's value


@dataclass(frozen=True)
class Declaration:
    """What a grid is: base params, factors, variants, seeds, and what it runs on."""

    base: dict[str, Any]  # params.yaml's values at declaration
    factors: dict[str, list[Any]]
    variants: list[str]
    seeds: list[int]
    lineage: Lineage

    def cells(self) -> list[Cell]:
        return cross(self.factors, self.variants, self.seeds)

    def as_attr(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "lineage": dataclasses.asdict(self.lineage)}

    @classmethod
    def from_attr(cls, attr: dict[str, Any]) -> Declaration:
        return cls(
            base=attr["base"],
            factors=attr["factors"],
            variants=list(attr["variants"]),
            seeds=[int(seed) for seed in attr["seeds"]],
            lineage=Lineage(**attr["lineage"]),
        )


def declare(
    name: str, declaration: Declaration, storage: optuna.storages.BaseStorage
) -> optuna.Study:
    """Create the grid's study and enqueue every cell; each cell's params are validated first,
    so that a value the params reject is refused now, not by a worker hours later."""
    cells = declaration.cells()
    for cell in cells:
        cell_params(declaration.base, cell)
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        raise PipelineError(
            f"the storage already holds a study called {name}: name the grid differently "
            f"(or `optuna delete-study --study-name {name}` to drop the old one)"
        ) from None
    study.set_user_attr(GRID_ATTR, declaration.as_attr())
    with warnings.catch_warnings():  # experimental in Optuna 5; names the value in the dashboard
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([VALUE_NAME])
    for cell in cells:
        study.enqueue_trial(_cell_params(cell), user_attrs={CELL_ATTR: cell.as_attr()})
    log.info("grid %s: %d cells on %s", name, len(cells), declaration.lineage.describe())
    return study


def _cell_params(cell: Cell) -> dict[str, Any]:
    """The cell's values as the trial's params: what optuna-dashboard lists per trial."""
    return {**cell.factors, "variant": cell.variant, "seed": cell.seed}


def suggest_cell(trial: optuna.Trial, cell: Cell, declaration: Declaration) -> None:
    """Record the cell's values as the trial's params. Optuna wants one distribution per
    param name in a study: each is a categorical over every value the grid gives it."""
    choices: dict[str, list[Any]] = {
        **declaration.factors,
        "variant": declaration.variants,
        "seed": declaration.seeds,
    }
    for key, value in _cell_params(cell).items():
        trial.suggest_categorical(key, choices[key])
        assert trial.params[key] == value, f"trial {trial.number} is not cell {cell.number}"


def open_grid(name: str, storage: optuna.storages.BaseStorage) -> tuple[optuna.Study, Declaration]:
    """The grid's study and declaration; one clear error if there is none of that name."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        known = [
            summary.study_name
            for summary in optuna.get_all_study_summaries(storage, include_best_trial=False)
            if GRID_ATTR in summary.user_attrs
        ]
        raise PipelineError(
            f"no grid called {name} in this storage (grids here: {', '.join(known) or 'none'}); "
            "declare it first (`python -m pipeline.grid declare`), or pass the storage it is in"
        ) from None
    attr = study.user_attrs.get(GRID_ATTR)
    if attr is None:
        raise PipelineError(f"study {name} is not a grid (a tuning study?): name a grid")
    return study, Declaration.from_attr(attr)


def cell_of(trial: FrozenTrial) -> Cell:
    """The cell a trial runs."""
    return Cell.from_attr(trial.user_attrs[CELL_ATTR])


def latest_trials(study: optuna.Study) -> dict[int, FrozenTrial]:
    """Each cell's latest trial (a cell whose worker died is retried as a new trial)."""
    latest: dict[int, FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False):
        if CELL_ATTR in trial.user_attrs:
            latest[cell_of(trial).number] = trial
    return latest


def open_cells(study: optuna.Study) -> tuple[int, int]:
    """How many cells wait to be claimed, and how many are running."""
    states = [trial.state for trial in latest_trials(study).values()]
    return states.count(TrialState.WAITING), states.count(TrialState.RUNNING)
