"""Every stage called as a function, in this process, on a tiny project: what each returns,
writes and logs to a real MLflow store (no DVC here: tests/test_pipeline.py runs it)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pytest
import yaml
from dvc.repo import Repo

from pipeline import compare, evaluate, fetch, normalize, train, tune
from pipeline.analysis.mlflow_runs import training_runs
from pipeline.analysis.summary import Summary
from pipeline.common.errors import TrainingDiverged
from pipeline.common.files import array_digest
from pipeline.config.layout import variant_files
from pipeline.config.params import Params
from pipeline.records import read_record
from pipeline.records.runs import TestMetrics, TrainMetrics, TunedRate
from tests.conftest import PROJECT_ROOT, client_for, runs_by_name, small_params, stores_at
from tests.sources import write_class_folder

VARIANTS = ("plain", "bn")
SEED = 42
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


class Staged:
    """What the module's stages returned, and the files each read."""

    tuned: dict[str, TunedRate]
    trained: dict[str, TrainMetrics]
    tested: dict[str, TestMetrics]
    summary: Summary
    reads: dict[str, set[Path]]


_READS: list[set[Path]] = []  # where the audit hook records, while a stage runs


def _record_reads(event: str, args: tuple[Any, ...]) -> None:
    """An audit hook: every file Python opens for reading, while `_READS` has a set."""
    if event != "open" or not _READS or not isinstance(args[0], str | bytes | os.PathLike):
        return
    path, mode, flags = os.fsdecode(args[0]), args[1], args[2]
    if mode is None and not Path(path).is_absolute():
        return  # os.open relative to a folder's descriptor (shutil.rmtree walking a folder)
    writes = (
        any(letter in mode for letter in "wax+")
        if mode
        else bool(flags & (os.O_WRONLY | os.O_RDWR))
    )
    if not writes:
        _READS[-1].add(Path(path).resolve())


sys.addaudithook(_record_reads)  # audit hooks cannot be removed: it records only in `reading`


@contextlib.contextmanager
def reading(reads: dict[str, set[Path]], stage: str) -> Iterator[None]:
    """Record the files the block reads as `reads[stage]`."""
    _READS.append(reads.setdefault(stage, set()))
    try:
        yield
    finally:
        _READS.pop()


@pytest.fixture(scope="module")
def staged_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Params, Staged]]:
    """fetch → normalize → tune → train → evaluate → compare, each stage called in-process."""
    root = tmp_path_factory.mktemp("staged")
    write_class_folder(root / "fixture", "tar.gz", per_class_train=5, per_class_test=2)
    # The landscape probe on, every 5 of the 10 training steps.
    params = small_params(seeds=[SEED], train={"probe": {"landscape": {"every_steps": 5}}})
    stores = stores_at(root)
    done = Staged()
    reads: dict[str, set[Path]] = {}
    done.reads = reads
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # params.yaml's paths are relative to the project root
        with reading(reads, "fetch"):
            fetch.run(params, stores)
        with reading(reads, "normalize"):
            normalize.run(params)
        done.tuned = {}
        done.trained = {}
        done.tested = {}
        for variant in VARIANTS:
            with reading(reads, f"tune@{variant}"):
                passed = tune.run(params, variant, stores)
            assert passed is not None
            done.tuned[variant] = passed
            with reading(reads, f"train@{variant}-{SEED}"):
                done.trained[variant] = train.run(params, variant, SEED, stores)
            with reading(reads, f"evaluate@{variant}-{SEED}"):
                done.tested[variant] = evaluate.run(params, variant, SEED, stores)
        with reading(reads, "compare"):
            done.summary = compare.run(params, stores)
        yield root, params, done


@pytest.fixture
def staged(staged_run: tuple[Path, Params, Staged]) -> Path:
    return staged_run[0]


def test_every_file_a_stage_reads_is_declared_to_dvc(
    staged_run: tuple[Path, Params, Staged], tmp_path: Path
) -> None:
    """The files each stage opened for reading, called in-process under an audit hook,
    against its deps and outs in dvc.yaml as DVC itself resolves them for these params."""
    root, params, done = staged_run
    repo_root = tmp_path / "declared"
    repo_root.mkdir()
    shutil.copy2(PROJECT_ROOT / "dvc.yaml", repo_root / "dvc.yaml")
    (repo_root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    with Repo.init(str(repo_root), no_scm=True) as repo:
        declared = {
            stage.name: {
                (root / Path(str(item.def_path))).resolve() for item in [*stage.deps, *stage.outs]
            }
            for stage in repo.index.stages
        }
    # Read but not data: the params file (DVC tracks the keys a stage names), the MLflow
    # store, and fetch's source, which `data.source` names (it may be a URL; a local archive's
    # content is the one read DVC cannot see, and fetch records its sha256 in provenance).
    outside = {root / "params.yaml", root / "mlflow.db", (root / params.data.source).resolve()}
    assert set(done.reads) <= set(declared)
    for stage, reads in done.reads.items():
        undeclared = {
            path
            for path in reads
            if path.is_relative_to(root)
            and path not in outside
            and not path.is_relative_to(root / "mlartifacts")
            and not any(path == item or path.is_relative_to(item) for item in declared[stage])
        }
        assert not undeclared, f"{stage} reads what dvc.yaml does not declare: {undeclared}"
    assert (root / params.paths.prepared_dataset).resolve() in done.reads[f"train@plain-{SEED}"]


def test_each_stage_returns_what_it_writes(staged_run: tuple[Path, Params, Staged]) -> None:
    root, params, done = staged_run
    for variant in VARIANTS:
        files = variant_files(params.paths, variant, SEED)
        assert read_record(root / files.tuned, TunedRate) == done.tuned[variant]
        assert done.tuned[variant].source == "params"
        assert read_record(root / files.train_metrics, TrainMetrics) == done.trained[variant]
        assert done.trained[variant].epochs == params.train.epochs
        assert read_record(root / files.test_metrics, TestMetrics) == done.tested[variant]
        assert 0 <= done.tested[variant].test_accuracy <= 1
    rows = {row.variant: row for row in done.summary.rows}
    assert list(rows) == list(VARIANTS)  # in params.yaml's order
    for variant in VARIANTS:
        assert rows[variant].test_accuracy.mean == done.tested[variant].test_accuracy
    (gap,) = done.summary.between_variants
    expected = done.tested["bn"].test_accuracy - done.tested["plain"].test_accuracy
    assert (gap.variant, gap.baseline, gap.test_accuracy.mean) == ("bn", "plain", expected)
    summary = json.loads((root / "comparison/summary.json").read_text())
    assert summary["differences"]["bn - plain"]["test_accuracy_difference"] == expected


def test_the_landscape_is_logged_written_and_drawn(staged_run: tuple[Path, Params, Staged]) -> None:
    staged, _, done = staged_run
    client = client_for(staged)
    for variant in VARIANTS:
        (run,) = runs_by_name(staged)[f"{variant}-{SEED}"]
        history = client.get_metric_history(run.info.run_id, "landscape/beta_smoothness")
        assert [point.step for point in history] == [0, 5, 10]
        assert 0 < run.data.metrics["speed/landscape_overhead"] < 1
        rows = (staged / f"results/{variant}-{SEED}/landscape.csv").read_text().splitlines()
        assert (
            rows[0]
            == "step,loss_variation,gradient_change,beta_smoothness,gradient_norm,non_finite"
        )
        assert len(rows) == 4
    assert (staged / "comparison/landscape.png").stat().st_size > 20_000
    # The analysis reads the same measures from MLflow (ablation) and the workspace (compare).
    experiment = client.get_experiment_by_name("bn-cifar10")
    assert experiment is not None
    from_mlflow = {
        run.variant: run.landscape for run in training_runs(client, experiment.experiment_id)
    }
    from_files = {row.variant: row.runs[0].landscape for row in done.summary.rows}
    assert set(from_mlflow) == set(from_files) == set(VARIANTS)
    for variant in VARIANTS:
        assert list(from_mlflow[variant]["gradient_change"]) == ["0", "5", "10"]
        for statistic, values in from_files[variant].items():
            assert from_mlflow[variant][statistic] == pytest.approx(values), statistic
    page = (staged / "comparison/summary.md").read_text().split("## Smoothness")[1]
    assert "| bn / plain |" in page and "(no interval: 1 vs 1 runs)" in page


def test_the_report_renders_the_summary_tables(staged_run: tuple[Path, Params, Staged]) -> None:
    root, _, done = staged_run
    report = (root / "reports/report.html").read_text()
    assert report.count("data:image/png;base64,") == 7
    for variant in VARIANTS:
        accuracy = f"{done.tested[variant].test_accuracy:.4f}"
        assert f"<td>{variant}</td>" in report and f"<td>{accuracy}</td>" in report
    assert "bn - plain: +" in report or "bn - plain: -" in report
    smoothness = report.split("<h2>Smoothness</h2>")[1].split("<h2>Figures")[0]
    assert "<td>bn / plain</td>" in smoothness and "|" not in smoothness
    assert "|" not in report.split("<h2>Every run</h2>")[1].split("<h2>Figures")[0]


def test_a_diverging_training_raises_and_marks_its_run_failed(
    staged_run: tuple[Path, Params, Staged], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, params, _ = staged_run
    monkeypatch.chdir(root)
    elsewhere = params.model_copy(
        update={
            "paths": params.paths.model_copy(
                update={"results": tmp_path / "results", "models": tmp_path / "models"}
            )
        }
    )
    values = elsewhere.model_dump(exclude_none=True)
    values["variants"]["plain"].update(optimizer="rmsprop", activation="relu")
    diverging = Params.model_validate(values)
    tuned = variant_files(diverging.paths, "plain", SEED).tuned
    tuned.parent.mkdir(parents=True)
    tuned.write_text('{"learning_rate": 1e6, "source": "params"}')
    with pytest.raises(TrainingDiverged, match="training diverged: loss became nan"):
        train.run(diverging, "plain", SEED, stores_at(tmp_path))
    assert not (tmp_path / "models").exists()
    (failed,) = runs_by_name(tmp_path)["plain-42"]
    assert failed.info.status == "FAILED"


def test_mlflow_store_has_one_tracked_run_per_variant(staged: Path) -> None:
    runs = runs_by_name(staged)
    client = client_for(staged)
    experiment = client.get_experiment_by_name("bn-cifar10")
    assert experiment is not None
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for variant in VARIANTS:
        (run,) = runs[f"{variant}-42"]
        assert run.info.status == "FINISHED"
        assert run.data.tags["variant"] == variant
        assert re.fullmatch(r"CPU: .+, \d+ cores?|GPU: .+", run.data.tags["device"])
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


def test_dataset_inputs_describe_the_arrays_each_run_used(staged: Path) -> None:
    prepared = np.load(staged / "data/prepared/cifar10.npz")
    raw = np.load(staged / "data/raw/cifar10.npz")
    expected = {
        "training": (prepared["x_train"], prepared["y_train"]),
        "validation": (prepared["x_val"], prepared["y_val"]),
        "evaluation": (raw["x_test"], raw["y_test"]),
    }
    (run,) = runs_by_name(staged)["plain-42"]
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
    staged: Path,
) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{staged / 'mlflow.db'}")
    (run,) = runs_by_name(staged)["bn-42"]
    model_id = json.loads((staged / "results/bn-42/mlflow_run.json").read_text())["model_id"]
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )
    assert [model.model_id for model in models] == [model_id]
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model_id}")
    images = np.load(staged / "data/raw/cifar10.npz")["x_test"][:5]
    assert images.dtype == np.uint8
    from_mlflow = np.asarray(pyfunc.predict(images))
    from_file = keras.models.load_model(staged / "models/bn-42.keras").predict(images, verbose=0)
    assert from_mlflow.shape == (5, 10)
    assert np.allclose(from_mlflow, from_file, atol=1e-5)
