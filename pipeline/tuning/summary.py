"""What a study found, and what it cost: the record `tuned.json` and the logs show."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.cifar10.chance import CHANCE_ACCURACY, at_chance
from pipeline.common.errors import PipelineError
from pipeline.tuning.spec import OBJECTIVE, PARAM

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
ERROR_ATTR = "error"  # set on a trial whose training raised: a real failure
MORE_IMAGES = "Give trials more images (raise tune.subset; null uses every training image)"


@dataclass(frozen=True)
class StudySummary:
    """Where a study stands: its trials' counts and cost, and its best learning rate so far.

    `failed` counts trials whose training raised; `abandoned` those that ended without a
    result because their worker was stopped or died (their rates are queued again).
    `epochs_trained` sums the epochs every finished trial ran; `epochs_unpruned` is what the
    same trials would have run without a pruner.
    """

    study: str
    storage: str
    n_trials: int
    complete: int
    pruned: int
    failed: int
    abandoned: int
    epochs_trained: int
    epochs_unpruned: int
    trial_seconds: float
    best_learning_rate: float | None
    best_value: float | None
    best_trial: int | None
    advice: str = ""  # what to change when no trial learned anything

    def tuned(self) -> dict[str, Any]:
        """The stage output `tuned.json`: the learning rate to train with, and its origin."""
        if self.best_learning_rate is None:
            raise PipelineError(
                f"study {self.study} has no complete trial ({self.pruned} pruned, "
                f"{self.failed} failed): every learning rate diverged, was pruned or crashed. "
                "Narrow tune.lr_low..tune.lr_high and rerun"
            )
        if not self.learned():
            raise PipelineError(
                f"study {self.study}: no learning rate learned anything: the best of "
                f"{self.complete} complete trials reached {OBJECTIVE} {self.best_value:.3f}, and "
                f"guessing gets {CHANCE_ACCURACY:.3f}, so the trials cannot rank learning rates. "
                f"{self.advice or MORE_IMAGES} and rerun: the study starts afresh under its "
                "new name"
            )
        return {
            "learning_rate": self.best_learning_rate,
            "source": "optuna",
            "study": self.study,
            "storage": self.storage,
            "n_trials": self.n_trials,
            "trials": {
                "complete": self.complete,
                "pruned": self.pruned,
                "failed": self.failed,
                "abandoned": self.abandoned,
            },
            "epochs": {"trained": self.epochs_trained, "unpruned": self.epochs_unpruned},
            "trial_seconds": round(self.trial_seconds, 1),
            "best_value": self.best_value,
            "best_trial": self.best_trial,
            "objective": f"{OBJECTIVE} after the last epoch",
        }

    def learned(self) -> bool:
        """Whether the best trial did better than guessing."""
        # A best trial no better than guessing learned nothing: the trials cannot rank
        # learning rates, and the first of many tied trials would win by accident.
        return self.best_value is not None and not at_chance(self.best_value)

    def describe(self) -> str:
        """One line for the log."""
        counts = (
            f"{self.complete} complete, {self.pruned} pruned, {self.failed} failed, "
            f"{self.abandoned} abandoned; {self.epochs_trained} of {self.epochs_unpruned} "
            "unpruned epochs trained"
        )
        if self.best_trial is None:
            return f"study {self.study}: {counts}; no complete trial yet"
        chance = "" if self.learned() else " (no better than guessing)"
        return (
            f"study {self.study}: {counts}; best {OBJECTIVE} {self.best_value:.4f} at learning "
            f"rate {self.best_learning_rate:.4g} (trial {self.best_trial}){chance}"
        )


def summarize(
    study: optuna.Study, n_trials: int, storage: str, epochs: int, advice: str = ""
) -> StudySummary:
    """Counts and cost of the study's trials and its best one (None while none is complete)."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(trial.state for trial in trials)
    failed = sum(1 for trial in trials if trial.state == TrialState.FAIL and is_failure(trial))
    finished = [trial for trial in trials if trial.state in FINISHED]
    try:
        best: FrozenTrial | None = study.best_trial
    except ValueError:
        best = None
    return StudySummary(
        study=study.study_name,
        storage=storage,
        n_trials=n_trials,
        complete=counts[TrialState.COMPLETE],
        pruned=counts[TrialState.PRUNED],
        failed=failed,
        abandoned=counts[TrialState.FAIL] - failed,
        epochs_trained=sum(len(trial.intermediate_values) for trial in finished),
        epochs_unpruned=len(finished) * epochs,
        trial_seconds=sum(
            trial.duration.total_seconds() for trial in finished if trial.duration is not None
        ),
        best_learning_rate=float(best.params[PARAM]) if best else None,
        best_value=float(best.value) if best and best.value is not None else None,
        best_trial=best.number if best else None,
        advice=advice,
    )


def is_failure(trial: FrozenTrial) -> bool:
    """Whether a FAIL trial's training raised (rather than its worker stopping or dying)."""
    return ERROR_ATTR in trial.user_attrs
