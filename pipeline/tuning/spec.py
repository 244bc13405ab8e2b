"""What a study is: the settings that decide its trials' outcomes, and the name they give it.

Trials train exactly the run their rate is for (the variant's `train` settings, `train.epochs`
epochs), so the best trial is the best rate for that run. The pruner stops losing trials
early: it compares trials after the same number of epochs by their validation loss, which
(as exp(-val_loss), on accuracy's scale), which still ranks trials whose accuracy is tied at
chance, as many are after the first epochs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import optuna

from pipeline.config.params import TuneParams
from pipeline.config.same_result import same_result_fields
from pipeline.config.train_params import TrainParams

log = logging.getLogger(__name__)

PARAM = "learning_rate"
OBJECTIVE = "val_accuracy"  # after the last epoch: the study maximizes it
PRUNING_VALUE = "exp(-val_loss)"  # after each epoch: the pruner compares it (higher is better)

# Training settings that do not change what a trial scores: the searched rate, and those
# params.py marks SAME_RESULT (how a run is resourced, probed or checkpointed). Changing them
# continues the same study.
NOT_A_TRIAL_OUTCOME: dict[str, Any] = {PARAM: True, **same_result_fields(TrainParams)}


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
                "subset": self.tune.subset,
                "sampler_seed": self.tune.sampler_seed,
                "first_rate": self.first_rate,
                "pruner": pruner_settings(self.tune),
                "objective": f"{OBJECTIVE} after epoch {self.settings.epochs}",
                "pruned_on": f"{PRUNING_VALUE} after each epoch",
                "step": "epochs completed",
            },
            "data_digest": self.data_digest,
        }

    @property
    def first_rate(self) -> float | None:
        """The rate the first trial trains at: the untuned one, when asked and in range."""
        rate = self.settings.learning_rate
        wanted = self.tune.try_default_first and self.tune.lr_low <= rate <= self.tune.lr_high
        return rate if wanted else None

    @property
    def name(self) -> str:
        """`<variant>-lr-<hash of the configuration>`: equal settings find the same study."""
        encoded = json.dumps(self.configuration(), sort_keys=True).encode()
        return f"{self.variant}-lr-{hashlib.sha256(encoded).hexdigest()[:10]}"


def pruner_settings(tune: TuneParams) -> dict[str, Any]:
    """The pruner's kind and only the settings that kind uses."""
    pruner = tune.pruner
    if pruner.kind == "median":
        return {
            "kind": "median",
            "n_startup_trials": pruner.n_startup_trials,
            "n_warmup_steps": pruner.n_warmup_steps,
        }
    if pruner.kind in ("successive_halving", "hyperband"):
        return {
            "kind": pruner.kind,
            "min_resource": pruner.min_resource,
            "reduction_factor": pruner.reduction_factor,
        }
    return {"kind": "none"}


def make_pruner(tune: TuneParams, epochs: int) -> optuna.pruners.BasePruner:
    """The configured pruner over steps 1..`epochs` (epochs completed)."""
    pruner = tune.pruner
    if pruner.kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=pruner.n_startup_trials, n_warmup_steps=pruner.n_warmup_steps
        )
    if pruner.kind in ("successive_halving", "hyperband") and pruner.min_resource >= epochs:
        # A quick study (1-epoch trials, say): there is no earlier epoch to stop a trial at,
        # so every trial runs in full; say so rather than refuse a setting that cannot be lower.
        log.warning(
            "tune.pruner %s: %d-epoch trials leave no epoch to prune at (min_resource %d); "
            "every trial trains in full, without pruning",
            pruner.kind,
            epochs,
            pruner.min_resource,
        )
        return optuna.pruners.NopPruner()
    if pruner.kind == "successive_halving":
        # Rungs after min_resource·rf^k epochs (1, 3, 9 by default); at each, a trial goes
        # on only when it is among the best 1/rf of the trials that reached it.
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=pruner.min_resource, reduction_factor=pruner.reduction_factor
        )
    if pruner.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_resource,
            max_resource=epochs,
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


def open_study(spec: StudySpec, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the spec's study, or load it when it exists (a rerun or another worker)."""
    study = optuna.create_study(
        storage=storage,
        study_name=spec.name,
        direction="maximize",
        sampler=trial_sampler(spec.tune.sampler_seed, 0),
        pruner=make_pruner(spec.tune, spec.settings.epochs),
        load_if_exists=True,
    )
    if "configuration" not in study.user_attrs:
        study.set_user_attr("configuration", spec.configuration())
    if spec.first_rate is not None:
        # The untuned rate as the first trial (Optuna's enqueue_trial; a resumed study or a
        # second worker finds it there and adds none). The pruners let the first trial to
        # reach a rung go on, so it trains in full and the study's best is never below it.
        # Without it, the plain network's study picks a rate that loses to the untuned one:
        # after one epoch every rate from 2e-4 up still sits at chance, and the pruner keeps
        # the small rates that climb slowly (docs/results.md, "With tuned learning rates").
        study.enqueue_trial({PARAM: spec.first_rate}, skip_if_exists=True)
    if study.metric_names is None:
        with warnings.catch_warnings():  # metric names are an experimental Optuna API
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE])  # optuna-dashboard's axis, not "Objective 0"
    return study
