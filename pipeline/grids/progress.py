"""Where a grid stands: each cell's latest trial, and the counts of done, diverged, running,
failed and waiting cells."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.grids.study import DIVERGED_ATTR, ERROR_ATTR, WORKER_ATTR, cell_of, latest_trials

# A cell's state, named for what it means to the grid.
STATE_NAMES = {
    TrialState.COMPLETE: "done",
    TrialState.PRUNED: "diverged",
    TrialState.RUNNING: "running",
    TrialState.FAIL: "failed",
    TrialState.WAITING: "waiting",
}
ORDER = ("done", "diverged", "running", "failed", "waiting")


@dataclass(frozen=True)
class CellRow:
    """One cell as the progress table shows it."""

    number: int
    setting: str
    state: str
    test_accuracy: float | None
    attempts: int
    worker: str
    message: str


def cell_rows(study: optuna.Study) -> list[CellRow]:
    """Every cell, by number, from its latest trial."""
    attempts = Counter(
        cell_of(trial).number
        for trial in study.get_trials(deepcopy=False)
        if trial.state != TrialState.WAITING and "cell" in trial.user_attrs
    )
    return [_row(trial, attempts[number]) for number, trial in sorted(latest_trials(study).items())]


def _row(trial: FrozenTrial, attempts: int) -> CellRow:
    return CellRow(
        number=cell_of(trial).number,
        setting=cell_of(trial).describe(),
        state=STATE_NAMES.get(trial.state, trial.state.name.lower()),
        test_accuracy=trial.value if trial.state == TrialState.COMPLETE else None,
        attempts=attempts,
        worker=str(trial.user_attrs.get(WORKER_ATTR, "")),
        message=str(trial.user_attrs.get(ERROR_ATTR) or trial.user_attrs.get(DIVERGED_ATTR) or ""),
    )


def counts(rows: list[CellRow]) -> dict[str, int]:
    """Cells per state, in ORDER."""
    found = Counter(row.state for row in rows)
    return {state: found.get(state, 0) for state in ORDER}


def describe(name: str, rows: list[CellRow]) -> str:
    """`grid lr: 12 cells: 5 done, 0 diverged, 2 running, 1 failed, 4 waiting`."""
    parts = ", ".join(f"{count} {state}" for state, count in counts(rows).items())
    return f"grid {name}: {len(rows)} cells: {parts}"


def progress_table(rows: list[CellRow]) -> str:
    """The cells as a Markdown table."""
    lines = [
        "| cell | setting | state | test accuracy | attempts | worker | message |",
        "|---:|---|---|---:|---:|---|---|",
    ]
    for row in rows:
        accuracy = f"{row.test_accuracy:.4f}" if row.test_accuracy is not None else ""
        message = row.message.replace("|", "/").splitlines()[0] if row.message else ""
        lines.append(
            f"| {row.number} | {row.setting} | {row.state} | {accuracy} | {row.attempts} "
            f"| {row.worker} | {message} |"
        )
    return "\n".join(lines)
