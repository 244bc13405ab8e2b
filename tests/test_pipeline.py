"""End to end: `dvc repro` of the whole DAG on fixture data, read back through DVC and MLflow."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from scipy import stats

from pipeline.files import array_digest
from pipeline.layout import variant_files
from pipeline.params import load_params
from pipeline.training import device_description
from tests.conftest import PROJECT_ROOT, dvc, edit_params, run_command

VARIANTS = ("plain", "bn")
PER_EPOCH_METRICS = (
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "speed/epoch_seconds",
    "speed/images_per_second",
)
PROBE_METRICS = (
    "probe/conv1/grad_norm",
    "probe/conv1/update_ratio",
    "probe/conv1/saturated_fraction",
    "probe/dense/mean_derivative",
    "probe/classifier/grad_norm",
)
# Stores and bookkeeping that no user restores by hand.
NOT_WORKSPACE = (".git", ".dvc", "mlflow.db", "mlflow.db.lock", "mlartifacts")


@pytest.fixture(scope="module")
def reproduced(project: Path) -> Path:
    """The fixture project after one `dvc repro`."""
    dvc(project, "repro")
    return project


def client_for(repo: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")


def runs_by_name(repo: Path) -> dict[str, list[mlflow.entities.Run]]:
    client = client_for(repo)
    experiment = client.get_experiment_by_name("bn-cifar10")
    assert experiment is not None
    runs: dict[str, list[mlflow.entities.Run]] = {}
    for run in client.search_runs([experiment.experiment_id], order_by=["start_time ASC"]):
        runs.setdefault(run.info.run_name, []).append(run)
    return runs


def test_repro_writes_every_declared_output(reproduced: Path) -> None:
    params = load_params(reproduced / "params.yaml")
    for variant in VARIANTS:
        files = variant_files(params.paths, variant, 42)
        for path in vars(files).values():
            assert (reproduced / path).is_file(), path
    for name in ("loss.png", "accuracy.png", "summary.md", "curves.csv", "summary.json"):
        assert (reproduced / "comparison" / name).stat().st_size > 0
    for name in (
        "accuracy",
        "gradient_norms",
        "update_ratios",
        "activation_derivatives",
        "preactivations",
    ):
        png = (reproduced / "comparison" / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n"), name
    summary = (reproduced / "comparison" / "summary.md").read_text()
    assert "| plain | 42 |" in summary and "| bn | 42 |" in summary
    report = (reproduced / "reports/report.html").read_text()
    assert report.count("data:image/png;base64,") == 6
    assert "<td>bn</td>" in report


def test_second_repro_runs_nothing(reproduced: Path) -> None:
    result = dvc(reproduced, "repro")
    assert "Running stage" not in result.stdout
    assert "up to date" in result.stdout


def test_changing_val_fraction_leaves_fetch_cached(reproduced: Path) -> None:
    original = (reproduced / "params.yaml").read_text()
    edit_params(reproduced, lambda values: values["data"].update(val_fraction=0.3))
    try:
        status = json.loads(dvc(reproduced, "status", "--json").stdout)
    finally:
        (reproduced / "params.yaml").write_text(original)
    assert "normalize" in status
    assert "fetch" not in status


def test_metrics_and_plots_are_readable_by_dvc(reproduced: Path) -> None:
    metrics = json.loads(dvc(reproduced, "metrics", "show", "--json").stdout)
    (workspace,) = (revision["data"] for revision in metrics.values())
    test_metrics = workspace["results/bn-42/test_metrics.json"]["data"]
    # The accuracy DVC shows is the one the confusion rows and MLflow hold.
    confusion = list(csv.DictReader((reproduced / "results/bn-42/confusion.csv").open()))
    correct = sum(row["actual"] == row["predicted"] for row in confusion)
    assert test_metrics["test_accuracy"] == pytest.approx(correct / len(confusion))
    (run,) = runs_by_name(reproduced)["bn-42"]
    assert run.data.metrics["test_accuracy"] == pytest.approx(test_metrics["test_accuracy"])
    assert set(test_metrics["per_class_accuracy"]) >= {"airplane", "truck"}
    rendered = dvc(reproduced, "plots", "show", "--json").stdout
    assert "Accuracy per epoch" in rendered
    assert "results/bn-42/confusion.csv" in rendered
    assert "Gradient norm per layer" in rendered
    layers = list(csv.DictReader((reproduced / "comparison/layers.csv").open()))
    # 6 weighted layers x 2 variants x (first, last) probed epoch, here epochs 1 and 2.
    assert len(layers) == 24
    assert {(row["variant"], row["probed"], row["epoch"]) for row in layers} == {
        (variant, probed, epoch)
        for variant in VARIANTS
        for probed, epoch in (("first", "1.0"), ("last", "2.0"))
    }
    assert all(float(row["grad_norm"]) > 0 for row in layers)


def test_mlflow_store_has_one_tracked_run_per_variant(reproduced: Path) -> None:
    runs = runs_by_name(reproduced)
    client = client_for(reproduced)
    experiment = client.get_experiment_by_name("bn-cifar10")
    assert experiment is not None
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for variant in VARIANTS:
        (run,) = runs[f"{variant}-42"]
        assert run.info.status == "FINISHED"
        assert run.data.tags["variant"] == variant
        assert run.data.tags["device"] == device_description()
        assert len(run.data.tags["dataset_digest"]) == 64
        assert run.data.params["train.batch_norm"] == str(variant == "bn")
        assert run.data.params["train.learning_rate"] == "0.001"
        assert run.data.params["train.augmentation.shear_degrees"] == "11.3"
        for metric in (*PER_EPOCH_METRICS, *PROBE_METRICS):
            history = client.get_metric_history(run.info.run_id, metric)
            assert [point.step for point in history] == [1, 2], metric
        assert 0 < run.data.metrics["speed/probe_overhead"] < 1
        assert "test_accuracy" in run.data.metrics
        assert "test_class_accuracy/airplane" in run.data.metrics
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
        assert {
            "history.csv",
            "learning_curves.png",
            "probes.csv",
            "preactivations.json",
            "test_metrics.json",
            "confusion.png",
        } <= artifacts
    (compare,) = runs["compare"]
    assert compare.data.tags["run.bn-42"] == runs["bn-42"][0].info.run_id


def test_dataset_inputs_describe_the_arrays_each_run_used(reproduced: Path) -> None:
    prepared = np.load(reproduced / "data/prepared/cifar10.npz")
    raw = np.load(reproduced / "data/raw/cifar10.npz")
    expected = {
        "training": (prepared["x_train"], prepared["y_train"]),
        "validation": (prepared["x_val"], prepared["y_val"]),
        "evaluation": (raw["x_test"], raw["y_test"]),
    }
    (run,) = runs_by_name(reproduced)["plain-42"]
    assert run.inputs is not None
    inputs = {item.tags[0].value: item.dataset for item in run.inputs.dataset_inputs if item.tags}
    assert set(inputs) == set(expected)
    for context, (x, y) in expected.items():
        dataset = inputs[context]
        assert dataset.digest == array_digest(x, y)[:32], context
        assert json.loads(dataset.profile or "{}").get("features_shape") == list(x.shape), context
    # One image fewer in the split is another digest.
    x, y = expected["training"]
    assert inputs["training"].digest != array_digest(x[1:], y[1:])[:32]


def test_the_logged_model_loads_by_its_id_and_predicts_like_the_keras_file(
    reproduced: Path,
) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{reproduced / 'mlflow.db'}")
    (run,) = runs_by_name(reproduced)["bn-42"]
    model_id = json.loads((reproduced / "results/bn-42/mlflow_run.json").read_text())["model_id"]
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )
    assert [model.model_id for model in models] == [model_id]
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model_id}")
    images = np.load(reproduced / "data/raw/cifar10.npz")["x_test"][:5]
    assert images.dtype == np.uint8
    from_mlflow = np.asarray(pyfunc.predict(images))
    from_file = keras.models.load_model(reproduced / "models/bn-42.keras").predict(
        images, verbose=0
    )
    assert from_mlflow.shape == (5, 10)
    assert np.allclose(from_mlflow, from_file, atol=1e-5)


def test_diverging_training_fails_and_marks_the_run_failed(reproduced: Path) -> None:
    elsewhere = reproduced / "diverging"
    (elsewhere / "results/plain").mkdir(parents=True)
    (elsewhere / "results/plain/tuned.json").write_text('{"learning_rate": 1e6, "source": "test"}')
    params_file = elsewhere / "params.yaml"
    values = yaml.safe_load((reproduced / "params.yaml").read_text())
    values["paths"].update(results=str(elsewhere / "results"), models=str(elsewhere / "models"))
    values["variants"]["plain"].update(optimizer="rmsprop", activation="relu")
    params_file.write_text(yaml.safe_dump(values))
    result = run_command(
        [sys.executable, "-m", "pipeline.train", "plain", "--params", str(params_file)],
        reproduced,
        check=False,
    )
    assert result.returncode == 1
    assert "error: training diverged: loss became nan" in result.stderr
    assert not (elsewhere / "models").exists()
    failed = [run for run in runs_by_name(reproduced)["plain-42"] if run.info.status == "FAILED"]
    assert len(failed) == 1
    shutil.rmtree(elsewhere)


def test_a_second_seed_adds_only_its_own_runs_and_the_spread(
    reproduced: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "two-seeds"
    shutil.copytree(reproduced, copy, ignore=shutil.ignore_patterns("diverging"))
    edit_params(copy, lambda values: values.update(seeds=[42, 7]))
    stages = dvc(copy, "stage", "list", "--name-only").stdout.split()
    assert {"train@plain-7", "train@bn-42", "evaluate@bn-7"} <= set(stages)
    ran = dvc(copy, "repro").stdout
    assert "Running stage 'train@bn-7'" in ran
    assert "Running stage 'train@bn-42'" not in ran  # seed 42 is cached
    summary = json.loads((copy / "comparison/summary.json").read_text())
    assert set(summary["runs"]) == {"plain-42", "plain-7", "bn-42", "bn-7"}
    assert summary["variants"]["bn"]["seeds"] == 2
    gap = summary["differences"]["bn - plain"]
    bn, plain = (
        [summary["runs"][f"{variant}-{seed}"]["test_accuracy"] for seed in (42, 7)]
        for variant in ("bn", "plain")
    )
    assert gap["test_accuracy_difference"] == pytest.approx(np.mean(bn) - np.mean(plain))
    if np.var(bn) + np.var(plain) > 0:  # else the interval is the point itself
        welch = stats.ttest_ind(bn, plain, equal_var=False).confidence_interval(0.95)
        assert (gap["ci_low"], gap["ci_high"]) == pytest.approx((welch.low, welch.high))
    # `./tasks.sh exps` keeps the headline and drops every per-run, summary and data column.
    drop = re.search(r"--drop '([^']+)'", (PROJECT_ROOT / "tasks.sh").read_text())
    assert drop is not None
    shown = dvc(copy, "exp", "show", "--csv", "--drop", drop[1]).stdout.splitlines()[0]
    metrics = set(shown.split(",")) - {"Experiment", "rev", "typ", "Created", "parent"}
    assert {"test_acc.plain", "test_acc.bn", "bn-plain.diff", "bn-plain.ci_low"} <= metrics
    assert not [column for column in metrics if re.match(r"(results|runs|variants)\W", column)]
    runs = runs_by_name(copy)
    assert {run.data.tags["seed"] for name in ("bn-42", "bn-7") for run in runs[name]} == {
        "42",
        "7",
    }


def workspace(repo: Path) -> dict[str, str]:
    """sha256 of every file of the workspace, by path."""
    return {
        str(path.relative_to(repo)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(repo.rglob("*"))
        if path.is_file() and path.relative_to(repo).parts[0] not in NOT_WORKSPACE
    }


def truncated_source(values: dict[str, Any]) -> None:
    values["data"]["source"] = "fixture/truncated.tar.gz"


def empty_training_split(values: dict[str, Any]) -> None:
    values["data"]["val_fraction"] = 0.99  # holds out every training image of the tiny data


@pytest.mark.parametrize(
    ("stage", "spoil", "message"),
    [
        ("fetch", truncated_source, "is truncated or corrupt"),
        ("normalize", empty_training_split, "empty training or validation split"),
    ],
)
def test_a_failed_repro_then_checkout_restores_the_workspace_byte_for_byte(
    reproduced: Path,
    tmp_path: Path,
    stage: str,
    spoil: Callable[[dict[str, Any]], None],
    message: str,
) -> None:
    copy = tmp_path / "committed"
    shutil.copytree(reproduced, copy, ignore=shutil.ignore_patterns("diverging"))
    archive = (copy / "fixture/cifar10-small.tar.gz").read_bytes()
    (copy / "fixture/truncated.tar.gz").write_bytes(archive[: len(archive) // 2])
    run_command(["git", "add", "-A"], copy)
    run_command(["git", "commit", "-qm", "reproduced"], copy)
    before = workspace(copy)
    edit_params(copy, spoil)

    failed = dvc(copy, "repro", stage, check=False)

    assert failed.returncode != 0
    assert message in failed.stderr
    run_command(["git", "checkout", "params.yaml"], copy)
    dvc(copy, "checkout")
    assert workspace(copy) == before
    assert "up to date" in dvc(copy, "status").stdout
