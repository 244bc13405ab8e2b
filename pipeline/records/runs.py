"""The records of a run's stages: the tuned rate, the MLflow run, train and test metrics."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipeline.records import Record

PositiveFloat = Annotated[float, Field(gt=0)]


class TunedRate(Record):
    """`tune@<variant>`'s learning rate for every seed of the variant, and where it came from
    (params.yaml, or the variant's Optuna study with its counts and cost)."""

    learning_rate: PositiveFloat
    source: Literal["params", "optuna"]
    study: str | None = None
    storage: str | None = None
    n_trials: int | None = None
    trials: dict[str, int] | None = None
    epochs: dict[str, int] | None = None
    trial_seconds: float | None = None
    best_value: float | None = None
    best_trial: int | None = None
    objective: str | None = None


class RunLink(Record):
    """The MLflow run a `train@<variant>-<seed>` logged to, and its model's id."""

    run_id: str
    experiment: str
    model_id: str | None = None


class TrainMetrics(Record):
    """`train`'s DVC metrics of one run (the last epoch's, its best, its cost)."""

    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    best_val_accuracy: float
    epochs: int
    learning_rate: float
    wall_seconds: float
    images_per_second: float
    probe_seconds: float
    probe_overhead: float
    landscape_seconds: float = 0.0
    landscape_overhead: float = 0.0


class TestMetrics(Record):
    """`evaluate`'s DVC metrics of one run on the test set."""

    __test__ = False  # not a pytest class, though its name starts with Test

    test_loss: float
    test_accuracy: float
    per_class_accuracy: dict[str, float]
