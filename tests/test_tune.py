"""Learning-rate tuning: real Optuna storages and MLflow stores in tmp_path, tiny data."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from pipeline.common.errors import PipelineError
from pipeline.common.files import read_json
from pipeline.config.params import Params
from pipeline.training import runtime
from pipeline.training.inputs import TrainingData
from pipeline.tuning import objective as tuning_objective
from pipeline.tuning.data import data_digest, subset_data
from pipeline.tuning.objective import EpochPruning, Objective
from pipeline.tuning.spec import StudySpec, make_pruner, open_study
from pipeline.tuning.storage import (
    Heartbeat,
    describe_storage,
    open_storage,
    storage_kind,
    storage_url,
)
from pipeline.tuning.summary import StudySummary
from pipeline.tuning.worker import no_learning_advice, run_study
from tests.conftest import TUNING_VARIANT as VARIANT
from tests.conftest import dvc, make_project, project_environment
from tests.conftest import load_tuning_study as load
from tests.conftest import tiny_colour_data as tiny_data
from tests.conftest import tiny_tuning_params as tiny_params
from tests.conftest import tiny_tuning_values as tiny_values
from tests.conftest import tuning_study_spec as study_spec
from tests.conftest import write_tuning_project as write_project

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
FAST = Heartbeat(interval_seconds=1, grace_seconds=60)
OPTUNA_CLI = Path(sys.executable).parent / "optuna"


@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MLflow at tmp_path/mlflow.db and the project root at tmp_path (default journal there)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    return tmp_path


def states(study: optuna.Study) -> list[TrialState]:
    return [trial.state for trial in study.get_trials(deepcopy=False)]


# --- without training -------------------------------------------------------------------


def test_tuning_off_passes_the_rate_through_without_tensorflow(tmp_path: Path) -> None:
    values = tiny_values(n_trials=0)
    values["variants"][VARIANT]["learning_rate"] = 0.0042
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(values))
    check = (
        "import sys; from pipeline.tune import main; main(['plain']); "
        "assert 'tensorflow' not in sys.modules and 'optuna' not in sys.modules, 'imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", check],
        cwd=tmp_path,
        env=project_environment(root=tmp_path),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "data").exists()  # no prepared dataset was needed
    tuned = read_json(tmp_path / "results" / VARIANT / "tuned.json")
    assert tuned == {"learning_rate": 0.0042, "source": "params"}
    assert not (tmp_path / "optuna.journal").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_tuning_on_the_test_set_is_refused(tmp_path: Path) -> None:
    values = tiny_values(n_trials=2)
    values["train"]["validation_data"] = "test"
    values["data"] = {"val_fraction": 0}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(values))
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.tune", VARIANT],
        cwd=tmp_path,
        env=project_environment(root=tmp_path),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: tuning with train.validation_data: test would pick")
    assert not (tmp_path / "results").exists() and not (tmp_path / "optuna.journal").exists()


def test_study_name_follows_the_search_configuration() -> None:
    params = tiny_params()

    def name(params: Params, variant: str = VARIANT, digest: str = "d") -> str:
        settings = params.variant(variant)
        return StudySpec(variant, settings, params.tune, params.seed, digest).name

    base = name(params)
    assert base.startswith("plain-lr-") and len(base) == len("plain-lr-") + 10
    assert name(tiny_params()) == base
    # What the search does not depend on: the trial count, the storage, train-only settings.
    assert name(tiny_params(n_trials=50, storage="journal:elsewhere.journal")) == base
    values = tiny_values()
    values["train"].update(learning_rate=0.5)
    assert name(Params.model_validate(values)) == base
    # Nor on how a trial is resourced, probed or checkpointed: each alone keeps the study.
    for section, change in (
        ("speed", {"intra_op_threads": 1}),
        ("speed", {"inter_op_threads": 1}),
        ("speed", {"steps_per_execution": 4}),
        ("probe", {"interval": 0}),
        ("probe", {"images": 32}),
        (None, {"resume": True}),
    ):
        values = tiny_values()
        (values["train"].setdefault(section, {}) if section else values["train"]).update(change)
        assert name(Params.model_validate(values)) == base, change
    values = tiny_values()
    values["train"].setdefault("speed", {})["fused_batch_norm"] = False  # other numerics
    assert name(Params.model_validate(values)) != base
    # What it does depend on.
    assert name(tiny_params(lr_high=0.5)) != base
    values = tiny_values()
    values["train"].update(epochs=3)  # trials train the run's epochs: another objective
    assert name(Params.model_validate(values)) != base
    assert name(tiny_params(subset=16)) != base
    assert name(tiny_params(sampler_seed=1)) != base
    halving = name(tiny_params(pruner={"kind": "successive_halving"}))
    assert halving != base
    assert name(tiny_params(pruner={"kind": "hyperband"})) not in (base, halving)
    assert name(tiny_params(pruner={"reduction_factor": 4})) != halving
    # ... but not on the settings of a pruner that is not used.
    assert name(tiny_params(pruner={"n_startup_trials": 1})) == halving
    values = tiny_values()
    values["variants"][VARIANT]["batch_size"] = 16
    assert name(Params.model_validate(values)) != base
    assert name(params, digest="other data") != base
    values = tiny_values()
    values["variants"]["bn"] = {"batch_norm": True}
    assert name(Params.model_validate(values), "bn").startswith("bn-lr-")
    # A first trial at the untuned rate is another study, and so is another untuned rate;
    # one outside the search range is not tried, which leaves the study as it was.
    first = name(tiny_params(try_default_first=True))
    assert first != base
    values = tiny_values(try_default_first=True)
    values["train"].update(learning_rate=0.01)
    assert name(Params.model_validate(values)) not in (base, first)
    values["train"].update(learning_rate=0.5)
    assert name(Params.model_validate(values)) == base


def test_storage_is_anchored_at_the_project_root_and_shown_without_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert storage_url(None) == f"journal:{tmp_path / 'optuna.journal'}"
    assert storage_url("journal:studies/lr.journal") == (
        f"journal:{tmp_path / 'studies/lr.journal'}"
    )
    assert storage_url("journal:/abs/lr.journal") == "journal:/abs/lr.journal"
    assert storage_url("sqlite:///optuna.db") == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert storage_url("sqlite:////abs/optuna.db") == "sqlite:////abs/optuna.db"
    url = "postgresql://tuner:s3cret@db.example:5432/optuna"
    assert storage_url(url) == "postgresql+psycopg://tuner:s3cret@db.example:5432/optuna"
    assert storage_url("postgresql+psycopg2://h/db") == "postgresql+psycopg2://h/db"
    assert describe_storage(url) == "postgresql://tuner:***@db.example:5432/optuna"
    assert storage_kind(url) == "postgresql"
    assert storage_kind(storage_url(None)) == "journal"
    with pytest.raises(PipelineError, match="optuna.db' is a directory|not usable"):
        (tmp_path / "optuna.db").mkdir()
        open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")


def test_storage_setting_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="journal:<file> or an SQLAlchemy URL"):
        tiny_params(storage="optuna.db")
    assert tiny_params(storage="journal:x.journal").tune.storage == "journal:x.journal"


def test_a_crashing_trial_fails_and_the_study_goes_on(
    stores: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAIL does not count toward n_trials; three failures in a row stop with one error line."""
    calls = []

    def crash_first(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1 or len(calls) > 2:
            raise RuntimeError("out of memory")
        return real_train_model(*args, **kwargs)

    real_train_model = tuning_objective.train_model
    monkeypatch.setattr(tuning_objective, "train_model", crash_first)
    params, data = tiny_params(), tiny_data()
    storage = storage_url(None)
    summary = run_study(params, VARIANT, data, 1, storage, heartbeat=FAST)
    assert (summary.complete, summary.failed) == (1, 1)
    study = load(storage, params, data)
    assert states(study) == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["error"] == "RuntimeError: out of memory"

    with pytest.raises(PipelineError, match="3 trials in a row failed.*out of memory"):
        run_study(params, VARIANT, data, 2, storage, heartbeat=FAST)
    assert states(study)[2:] == [TrialState.FAIL] * 3


def test_an_op_without_a_deterministic_kernel_stops_the_study_with_that_error(
    stores: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a divergence prunes a trial: TensorFlow's refusal of a non-deterministic op (met
    on GPUs) reaches the user as the message that names the fix, after the first trial."""
    import tensorflow as tf

    def refused(*args: Any, **kwargs: Any) -> Any:
        with runtime.deterministic_kernels_required(True):
            raise tf.errors.UnimplementedError(
                None, None, "A deterministic GPU implementation of SomeOp is not available."
            )

    monkeypatch.setattr(tuning_objective, "train_model", refused)
    params, data = tiny_params(), tiny_data()
    storage = storage_url(None)
    with pytest.raises(PipelineError, match=r"no deterministic kernel.*train.deterministic: false"):
        run_study(params, VARIANT, data, 3, storage, heartbeat=FAST)
    study = load(storage, params, data)
    assert states(study) == [TrialState.FAIL]  # not PRUNED as "diverged", and only one trial
    assert "diverged" not in study.trials[0].user_attrs


def test_a_trial_rate_is_validated_like_params_yaml() -> None:
    settings = tiny_params().variant(VARIANT)
    assert settings.with_learning_rate(0.02).learning_rate == 0.02
    with pytest.raises(PipelineError, match=r"learning rate -1.*greater than 0"):
        settings.with_learning_rate(-1.0)


# --- one study through the stage ----------------------------------------------------------


@pytest.fixture(scope="module")
def tuned_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`python -m pipeline.tune plain` (in this process) with tune.n_trials 3."""
    root = write_project(tmp_path_factory.mktemp("tuned"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("DVC_ROOT", raising=False)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.setattr(sys, "argv", ["pipeline.tune", VARIANT])
        from pipeline.tune import main

        main()
        yield root


def read_study(root: Path) -> optuna.Study:
    tuned = read_json(root / "results" / VARIANT / "tuned.json")
    return optuna.load_study(
        study_name=tuned["study"], storage=open_storage(f"journal:{tuned['storage']}")
    )


def test_stage_writes_the_best_rate_and_a_summary(tuned_project: Path) -> None:
    tuned = read_json(tuned_project / "results" / VARIANT / "tuned.json")
    study = read_study(tuned_project)
    assert tuned["storage"] == str(tuned_project / "optuna.journal")
    assert tuned["source"] == "optuna"
    assert tuned["learning_rate"] == study.best_params["learning_rate"]
    assert tuned["best_value"] == study.best_value
    assert tuned["best_trial"] == study.best_trial.number
    assert tuned["n_trials"] == 3
    assert tuned["trials"] == {"complete": 3, "pruned": 0, "failed": 0, "abandoned": 0}
    assert tuned["epochs"] == {"trained": 6, "unpruned": 6}  # pruner none: 3 trials x 2 epochs
    assert [trial.number for trial in study.trials] == [0, 1, 2]
    assert all(1e-4 <= trial.params["learning_rate"] <= 1e-1 for trial in study.trials)
    # Each epoch's exp(-val_loss) was reported for pruning (step = epochs completed): the
    # trial's own val_loss, as its MLflow child run logged it.
    client = MlflowClient(tracking_uri=f"sqlite:///{tuned_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bn-cifar10")
    assert experiment is not None
    for run in client.search_runs([experiment.experiment_id]):
        if "optuna_trial_number" not in run.data.tags:
            continue
        trial = study.trials[int(run.data.tags["optuna_trial_number"])]
        losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_loss")}
        assert sorted(trial.intermediate_values) == sorted(losses) == [1, 2]
        for epoch, value in trial.intermediate_values.items():
            assert value == pytest.approx(math.exp(-losses[epoch]), rel=1e-6)
    assert study.metric_names == ["val_accuracy"]
    configuration = study.user_attrs["configuration"]
    assert configuration["training"]["epochs"] == 2 and configuration["variant"] == VARIANT


def test_study_is_readable_by_the_optuna_cli(tuned_project: Path) -> None:
    tuned = read_json(tuned_project / "results" / VARIANT / "tuned.json")
    storage = ["--storage", tuned["storage"]]
    named = ["--study-name", tuned["study"], *storage, "-f", "json"]

    def cli(*args: str) -> Any:
        result = subprocess.run(
            [str(OPTUNA_CLI), *args], capture_output=True, text=True, cwd=tuned_project
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    (listed,) = cli("studies", *storage, "-f", "json")
    assert listed["name"] == tuned["study"] and listed["n_trials"] == 3
    trials = cli("trials", *named)
    assert [trial["state"] for trial in trials] == ["COMPLETE"] * 3
    best = cli("best-trial", *named)
    assert best["number"] == tuned["best_trial"]
    assert best["params"]["learning_rate"] == pytest.approx(tuned["learning_rate"])


def test_mlflow_holds_a_parent_run_and_a_child_per_trial(tuned_project: Path) -> None:
    tuned = read_json(tuned_project / "results" / VARIANT / "tuned.json")
    client = MlflowClient(tracking_uri=f"sqlite:///{tuned_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bn-cifar10")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if run.info.run_name == f"tune-{VARIANT}"]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId")]
    assert len(runs) == 4 and len(children) == 3
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["variant"] == VARIANT
    assert parent.data.tags["optuna_study"] == tuned["study"]
    assert parent.data.tags["optuna_storage_kind"] == "journal"
    metrics = parent.data.metrics
    assert metrics["study/best_value"] == pytest.approx(tuned["best_value"])
    assert metrics["study/best_learning_rate"] == pytest.approx(tuned["learning_rate"])
    counts = ("study/n_complete", "study/n_pruned", "study/n_failed", "study/n_abandoned")
    assert tuple(metrics[name] for name in counts) == (3, 0, 0, 0)
    assert (metrics["study/epochs_trained"], metrics["study/epochs_unpruned"]) == (6, 6)
    assert parent.data.params["train.epochs"] == "2"
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert {"optimization_history.png", "learning_rate_slice.png"} <= artifacts

    study = read_study(tuned_project)
    by_number = {int(run.data.tags["optuna_trial_number"]): run for run in children}
    assert sorted(by_number) == [0, 1, 2]
    for number, run in by_number.items():
        trial = study.trials[number]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["optuna_study"] == tuned["study"]
        assert run.data.tags["optuna_trial_state"] == "COMPLETE"
        assert run.info.status == "FINISHED"
        assert float(run.data.params["train.learning_rate"]) == pytest.approx(
            trial.params["learning_rate"]
        )
        assert run.data.params["optuna.trial_number"] == str(number)
        assert run.data.params["train.epochs"] == "2"
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [point.step for point in history] == [1, 2]
        assert run.data.metrics["study/objective"] == pytest.approx(trial.value)


def test_rerunning_a_finished_study_runs_no_trial(
    tuned_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tuned = tuned_project / "results" / VARIANT / "tuned.json"
    before = tuned.read_text()
    tuned.unlink()
    monkeypatch.chdir(tuned_project)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tuned_project / 'mlflow.db'}")
    from pipeline.tune import main

    main([VARIANT])
    assert tuned.read_text() == before
    assert len(read_study(tuned_project).trials) == 3
    client = MlflowClient(tracking_uri=f"sqlite:///{tuned_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bn-cifar10")
    assert experiment is not None
    assert len(client.search_runs([experiment.experiment_id])) == 4  # no new runs


# --- trials and studies in this process ---------------------------------------------------


def test_a_study_whose_best_trial_only_guesses_is_refused() -> None:
    def summary(best_value: float) -> StudySummary:
        return StudySummary(
            "plain-lr-0", "optuna.journal", 3, 3, 0, 0, 0, 6, 6, 1.0, 0.099, best_value, 0
        )

    with pytest.raises(PipelineError, match=r"no learning rate learned anything.*0\.100"):
        summary(0.1).tuned()
    assert "no better than guessing" in summary(0.1).describe()
    assert summary(0.35).tuned()["learning_rate"] == 0.099
    assert "guessing" not in summary(0.35).describe()


def test_objective_on_a_fixed_trial() -> None:
    params = tiny_params()
    settings = params.variant(VARIANT)
    objective = Objective(tiny_data(), settings, params.seed, params.tune)
    value = objective(optuna.trial.FixedTrial({"learning_rate": 1e-2}))
    assert value > 0.1  # the tiny colour-coded data is learnable at this rate
    # Seeded: the same rate, the same value.
    assert objective(optuna.trial.FixedTrial({"learning_rate": 1e-2})) == value


@pytest.mark.parametrize("warmup", [1, 2])
def test_steps_count_epochs_completed_as_params_yaml_says(warmup: int) -> None:
    pruner = {"kind": "median", "n_startup_trials": 1, "n_warmup_steps": warmup}
    tune = tiny_params(pruner=pruner).tune
    study = optuna.create_study(direction="maximize", pruner=make_pruner(tune, epochs=5))
    ahead = study.ask()
    for epoch in range(3):  # Keras' 0-based epoch index
        EpochPruning(ahead).on_epoch_end(epoch, {"val_loss": 1.5, "val_accuracy": 0.5})
    study.tell(ahead, 0.5)
    behind = study.ask()
    callback = EpochPruning(behind)
    # n_warmup_steps: the epochs a trial always runs; the report after the last one prunes.
    for epoch in range(warmup - 1):
        callback.on_epoch_end(epoch, {"val_loss": 2.3, "val_accuracy": 0.1})
    with pytest.raises(optuna.TrialPruned):
        callback.on_epoch_end(warmup - 1, {"val_loss": 2.3, "val_accuracy": 0.1})
    assert sorted(study.trials[0].intermediate_values) == [1, 2, 3]
    assert sorted(study.trials[1].intermediate_values) == list(range(1, warmup + 1))


def test_a_diverging_learning_rate_is_pruned_and_the_study_goes_on(stores: Path) -> None:
    values = tiny_values(lr_low=1e-3, lr_high=1e12, pruner={"kind": "none"})
    values["variants"][VARIANT]["optimizer"] = "rmsprop"  # Adam's step size is bounded
    params, data = Params.model_validate(values), tiny_data()
    storage = storage_url(None)
    study = open_study(
        StudySpec(
            VARIANT,
            params.variant(VARIANT),
            params.tune,
            params.seed,
            data_digest(data),
        ),
        open_storage(storage),
    )
    study.enqueue_trial({"learning_rate": 1e6})
    study.enqueue_trial({"learning_rate": 1e-2})
    summary = run_study(params, VARIANT, data, 2, storage, heartbeat=FAST)
    diverged, fine = study.trials
    assert diverged.state == TrialState.PRUNED
    assert "training diverged: loss became nan" in diverged.user_attrs["diverged"]
    assert fine.state == TrialState.COMPLETE
    assert summary.best_learning_rate == pytest.approx(1e-2)


def test_median_pruner_stops_a_hopeless_trial(stores: Path) -> None:
    values = tiny_values(
        lr_low=1e-9, pruner={"kind": "median", "n_startup_trials": 1, "n_warmup_steps": 0}
    )
    params, data, storage = Params.model_validate(values), tiny_data(), storage_url(None)
    study = load_or_create(storage, params, data)
    study.enqueue_trial({"learning_rate": 1e-3})  # val_accuracy 0.6 after one epoch
    study.enqueue_trial({"learning_rate": 1e-9})  # learns nothing: below the median
    run_study(params, VARIANT, data, 2, storage, heartbeat=FAST)
    good, hopeless = study.trials
    assert good.state == TrialState.COMPLETE
    assert hopeless.state == TrialState.PRUNED
    assert list(hopeless.intermediate_values) == [1]  # stopped after its first epoch


def load_or_create(storage: str, params: Params, data: TrainingData) -> optuna.Study:
    return open_study(study_spec(params, data), open_storage(storage))


def test_successive_halving_stops_losers_early_and_counts_the_epochs(stores: Path) -> None:
    values = tiny_values(lr_low=1e-9, pruner={"kind": "successive_halving", "reduction_factor": 2})
    values["train"]["epochs"] = 3
    params, data, storage = Params.model_validate(values), tiny_data(), storage_url(None)
    study = load_or_create(storage, params, data)
    for rate in (1e-3, 1e-9, 1e-8):  # one that learns, two that stay at chance
        study.enqueue_trial({"learning_rate": rate})
    summary = run_study(params, VARIANT, data, 3, storage, heartbeat=FAST)
    learns, *hopeless = study.trials
    assert learns.state == TrialState.COMPLETE and sorted(learns.intermediate_values) == [1, 2, 3]
    # The first rung is after 1 epoch; half the trials that reach it go on.
    assert [trial.state for trial in hopeless] == [TrialState.PRUNED] * 2
    assert [list(trial.intermediate_values) for trial in hopeless] == [[1], [1]]
    assert (summary.epochs_trained, summary.epochs_unpruned) == (3 + 1 + 1, 3 * 3)
    assert summary.trial_seconds > 0


def test_the_first_trial_trains_the_untuned_rate_in_full(stores: Path) -> None:
    """With try_default_first, the study starts at train.learning_rate and, being the first
    trial at every rung, trains it in full even when it is the worst: the tuned rate is then
    never below the untuned one on the tuning seed. A rerun does not try it again."""
    values = tiny_values(
        lr_low=1e-9,
        try_default_first=True,
        pruner={"kind": "successive_halving", "reduction_factor": 2},
    )
    values["train"].update(epochs=3, learning_rate=1e-9)  # stays at chance
    params, data, storage = Params.model_validate(values), tiny_data(), storage_url(None)
    study = load_or_create(storage, params, data)
    for rate in (1e-3, 1e-8):  # one that learns, one that stays at chance
        study.enqueue_trial({"learning_rate": rate})
    summary = run_study(params, VARIANT, data, 3, storage, heartbeat=FAST)
    untuned, learns, hopeless = study.trials
    assert untuned.params["learning_rate"] == pytest.approx(1e-9)
    assert untuned.state == TrialState.COMPLETE
    assert sorted(untuned.intermediate_values) == [1, 2, 3]
    assert learns.state == TrialState.COMPLETE
    assert hopeless.state == TrialState.PRUNED
    assert summary.best_learning_rate == pytest.approx(1e-3)
    run_study(params, VARIANT, data, 4, storage, heartbeat=FAST)
    rates = [trial.params["learning_rate"] for trial in study.trials]
    assert len(rates) == 4 and rates.count(rates[0]) == 1


def test_pruning_ranks_trials_whose_accuracy_ties_at_chance() -> None:
    """Two trials at 0.100 accuracy after the first epoch: the pruner still tells them apart
    by validation loss, so a rung keeps the better one instead of whichever came first."""
    tune = tiny_params(pruner={"kind": "successive_halving", "reduction_factor": 2}).tune
    study = optuna.create_study(direction="maximize", pruner=make_pruner(tune, epochs=4))
    first, worse, better = study.ask(), study.ask(), study.ask()
    at_chance = {"val_accuracy": 0.1}
    EpochPruning(first).on_epoch_end(0, {**at_chance, "val_loss": 2.302})
    with pytest.raises(optuna.TrialPruned):
        EpochPruning(worse).on_epoch_end(0, {**at_chance, "val_loss": 2.310})
    EpochPruning(better).on_epoch_end(0, {**at_chance, "val_loss": 2.290})  # goes on


def test_a_worker_whose_trial_another_worker_failed_goes_on(
    stores: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params, data, storage = tiny_params(), tiny_data(), storage_url(None)
    failed_meanwhile: list[int] = []

    def fail_it_meanwhile(*args: Any, **kwargs: Any) -> Any:
        result = real_train_model(*args, **kwargs)
        if not failed_meanwhile:
            # Another worker, judging this trial's heartbeat stale, fails it.
            other = load_or_create(storage, params, data)
            (running,) = other.get_trials(states=(TrialState.RUNNING,))
            other.tell(running.number, state=TrialState.FAIL)
            failed_meanwhile.append(running.number)
        return result

    real_train_model = tuning_objective.train_model
    monkeypatch.setattr(tuning_objective, "train_model", fail_it_meanwhile)
    summary = run_study(params, VARIANT, data, 1, storage, heartbeat=FAST)
    assert (summary.complete, summary.failed, summary.abandoned) == (1, 0, 1)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert {run.info.status for run in runs} == {"FINISHED"}  # no run left open
    states = {
        run.data.tags.get("optuna_trial_number"): run.data.tags.get("optuna_trial_state")
        for run in runs
    }
    assert states[str(failed_meanwhile[0])] == "FAIL"


def test_a_bn_study_at_chance_says_why_and_what_to_change() -> None:
    values = tiny_values()
    values["variants"]["bn"] = {"batch_norm": True}
    settings = Params.model_validate(values).variant("bn")
    advice = no_learning_advice(settings, 32)  # 2 epochs of 4 steps
    assert "8 training steps at train.bn_momentum 0.99 leave 92%" in advice
    assert "Lower train.bn_momentum" in advice
    assert no_learning_advice(tiny_params().variant(VARIANT), 32) == ""
    summary = StudySummary(
        "bn-lr-0", "optuna.journal", 3, 3, 0, 0, 0, 6, 6, 1.0, 0.01, 0.1, 0, advice
    )
    with pytest.raises(PipelineError, match="no learning rate learned anything.*bn_momentum"):
        summary.tuned()


def test_an_interrupted_study_resumes_to_the_requested_count(stores: Path) -> None:
    params, data = tiny_params(), tiny_data()
    storage = storage_url(None)
    assert run_study(params, VARIANT, data, 2, storage, heartbeat=FAST).complete == 2
    # A worker killed mid-trial leaves a RUNNING trial with no heartbeat behind.
    study = load_or_create(storage, params, data)
    study.ask()
    time.sleep(1.5)
    resumed = run_study(
        params, VARIANT, data, 3, storage, heartbeat=Heartbeat(interval_seconds=1, grace_seconds=1)
    )
    # The stale trial is FAIL but no failure of training: abandoned, and run again.
    assert (resumed.complete, resumed.failed, resumed.abandoned) == (3, 0, 1)
    trials = study.get_trials(deepcopy=False)
    assert [trial.number for trial in trials] == [0, 1, 2, 3]
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 2 + [
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]
    assert trials[3].system_attrs["failed_trial"] == 2  # Optuna's retry of the stale trial
    rates = [trial.params["learning_rate"] for trial in trials if trial.state in FINISHED]
    assert len(set(rates)) == 3  # no finished trial was repeated
    # Asking again for 3 finished trials runs nothing.
    assert run_study(params, VARIANT, data, 3, storage, heartbeat=FAST).complete == 3
    assert len(study.get_trials(deepcopy=False)) == 4


# --- parallel workers ---------------------------------------------------------------------


@pytest.mark.slow  # tests/test_scale_out.py runs three workers on PostgreSQL in every run
def test_parallel_workers_share_one_study(tmp_path: Path) -> None:
    root = write_project(tmp_path / "project")
    journal = tmp_path / "shared" / "lr.journal"
    command = [
        sys.executable,
        "-m",
        "pipeline.tune",
        VARIANT,
        "--n-trials",
        "3",
        "--storage",
        f"journal:{journal}",
    ]
    env = project_environment(root=tmp_path)
    workers = [
        subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        text = stderr.decode()
        assert worker.returncode == 0, text[-3000:]
        for sign in ("Traceback", "error:", " ERROR ", "database is locked", "Forcibly"):
            assert sign not in text, text[-3000:]
    assert not (root / "results").exists()  # workers write no stage output
    params = Params.model_validate(yaml.safe_load((root / "params.yaml").read_text()))
    subset = subset_data(tiny_data(), params.tune.subset, params.seed)
    study = load(f"journal:{journal}", params, subset)
    trials = study.get_trials(deepcopy=False)
    # MaxTrialsCallback stops each worker after a trial ends: two workers finish 3 or 4.
    assert sum(trial.state in FINISHED for trial in trials) in (3, 4)
    assert not [trial for trial in trials if trial.state == TrialState.RUNNING]
    numbers = [trial.number for trial in trials]
    assert numbers == list(range(len(trials)))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bn-cifar10")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    ran = {int(run.data.tags["optuna_trial_number"]) for run in children}
    assert ran >= {trial.number for trial in trials if trial.state in FINISHED}


# --- the DAG --------------------------------------------------------------------------------


@pytest.mark.slow
def test_dvc_exp_run_tunes_then_trains_with_the_tuned_rates(tmp_path: Path) -> None:
    repo = make_project(tmp_path)
    # relu + Adam for 3 epochs, so that the fixture's trials learn and the studies rank rates.
    overrides = [
        "tune.n_trials=2",
        "train.epochs=3",
        "train.activation=relu",
        "train.optimizer=adam",
    ]
    dvc(repo, "exp", "run", *(f"-S{setting}" for setting in overrides))
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bn-cifar10")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    for variant in ("plain", "bn"):
        tuned = read_json(repo / "results" / variant / "tuned.json")
        assert tuned["source"] == "optuna"
        assert tuned["trials"]["complete"] + tuned["trials"]["pruned"] == 2
        trained = read_json(repo / "results" / f"{variant}-42" / "train_metrics.json")
        assert trained["learning_rate"] == pytest.approx(tuned["learning_rate"])
        (train_run,) = [run for run in runs if run.info.run_name == f"{variant}-42"]
        assert train_run.data.params["train.learning_rate_source"] == "optuna"
        assert [run for run in runs if run.info.run_name == f"tune-{variant}"]
    assert (repo / "optuna.journal").is_file()
    status = dvc(repo, "status").stdout
    assert "changed" not in status, status


def test_a_study_of_one_epoch_trials_runs_without_pruning_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for kind in ("successive_halving", "hyperband"):
        tune = tiny_params(pruner={"kind": kind}).tune
        with caplog.at_level("WARNING"):
            pruner = make_pruner(tune, epochs=1)
        assert isinstance(pruner, optuna.pruners.NopPruner)
        assert "every trial trains in full, without pruning" in caplog.text
    assert isinstance(
        make_pruner(tiny_params(pruner={"kind": "successive_halving"}).tune, epochs=2),
        optuna.pruners.SuccessiveHalvingPruner,
    )
