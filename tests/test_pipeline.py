"""End to end: `dvc repro` of the whole DAG on fixture data, read back through DVC and MLflow."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from pipeline.config.layout import variant_files
from pipeline.config.params import load_params
from tests.conftest import (
    PROJECT_ROOT,
    RECOVERY,
    dvc,
    edit_params,
    make_project,
    run_command,
    runs_by_name,
    workspace,
)
from tests.sources import write_class_folder
from tools.plots_template import LIBRARIES
from tools.plots_template import TEMPLATE as PLOTS_TEMPLATE
from tools.stage_deps import code_closure

VARIANTS = ("plain", "bn")


@pytest.fixture(scope="module")
def reproduced(project: Path) -> Path:
    """The fixture project after one `dvc repro`."""
    dvc(project, "repro")
    return project


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
    assert report.count("data:image/png;base64,") == 7
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


def test_plots_render_without_a_network(reproduced: Path) -> None:
    # .dvc/config.local's template carries vega inline: no script is loaded from anywhere.
    assert PLOTS_TEMPLATE.is_file(), "run ./tasks.sh setup: it writes the plots template"
    for command in (("plots", "show"), ("plots", "diff", "HEAD")):
        out = reproduced / f"offline-{command[1]}"
        page = dvc(reproduced, *command, "-o", str(out)).stdout.strip().splitlines()[-1]
        html = (out / "index.html").read_text()
        assert page == (out / "index.html").as_uri()
        assert not re.findall(r"<script[^>]*\bsrc=", html)
        assert "Accuracy per epoch" in html and html.count("vegaEmbed('#") >= 5
        for library in LIBRARIES:
            assert library.spec in html.splitlines()[1]


def test_plots_render_in_a_clone_set_up_another_way(reproduced: Path, tmp_path: Path) -> None:
    # Installed without ./tasks.sh (uv sync, pip install -e .): no template and no
    # .dvc/config.local; `dvc plots show` then uses DVC's own page, vega from its CDN.
    clone = tmp_path / "clone"
    shutil.copytree(reproduced, clone)
    (clone / ".dvc" / "config.local").unlink()
    shutil.rmtree(clone / ".cache" / "plots")
    page = dvc(clone, "plots", "show", "-o", str(tmp_path / "out")).stdout.strip()
    html = (tmp_path / "out" / "index.html").read_text()
    assert page.splitlines()[-1] == (tmp_path / "out" / "index.html").as_uri()
    assert re.findall(r"<script[^>]*\bsrc=\S*vega", html) and "Accuracy per epoch" in html


def test_a_second_seed_adds_only_its_own_runs_and_the_spread(
    reproduced: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "two-seeds"
    shutil.copytree(reproduced, copy)
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


UNREACHABLE = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}  # nothing listens on port 9


@dataclass(frozen=True)
class Failure:
    """A `dvc repro` that fails: the params edit before it, its arguments, its environment."""

    spoil: Callable[[dict[str, Any]], None] | None
    args: tuple[str, ...]
    env: dict[str, str]
    message: str


def truncated_source(values: dict[str, Any]) -> None:
    values["data"]["source"] = "fixture/truncated.tar.gz"


def empty_training_split(values: dict[str, Any]) -> None:
    values["data"]["val_fraction"] = 0.99  # holds out every training image of the tiny data


def tuning_on_the_test_set(values: dict[str, Any]) -> None:
    values["tune"]["n_trials"] = 2
    values["data"]["val_fraction"] = 0  # normalize succeeds with it, then tune refuses
    values["train"]["validation_data"] = "test"


def other_split(values: dict[str, Any]) -> None:
    values["data"]["val_fraction"] = 0.25  # normalize and tune succeed, then train fails


FAILURES = {
    "fetch": Failure(truncated_source, ("fetch",), {}, "is truncated or corrupt"),
    "normalize": Failure(
        empty_training_split, ("normalize",), {}, "empty training or validation split"
    ),
    "tune, after normalize succeeded": Failure(
        tuning_on_the_test_set, (), {}, "would pick the learning rate on the test set"
    ),
    "train, after normalize and tune succeeded": Failure(
        other_split, (), UNREACHABLE, "MLflow tracking server http://127.0.0.1:9 is unreachable"
    ),
    "evaluate": Failure(None, ("-f", "-s", "evaluate@bn-42"), UNREACHABLE, "is unreachable"),
    "compare": Failure(None, ("-f", "-s", "compare"), UNREACHABLE, "is unreachable"),
}


@pytest.mark.parametrize("case", FAILURES, ids=list(FAILURES))
def test_after_a_failed_repro_the_documented_recovery_restores_every_output(
    reproduced: Path, tmp_path: Path, case: str
) -> None:
    """README's recovery gives back the last good workspace byte for byte after a stage
    failed (DVC removed its outputs before running it), including what stages upstream of the
    failure changed before it."""
    failure = FAILURES[case]
    copy = committed_copy(reproduced, tmp_path)
    archive = (copy / "fixture/cifar10-small.tar.gz").read_bytes()
    (copy / "fixture/truncated.tar.gz").write_bytes(archive[: len(archive) // 2])
    before = workspace(copy)
    if failure.spoil is not None:
        edit_params(copy, failure.spoil)

    failed = run_command(
        [sys.executable, "-m", "dvc", "repro", *failure.args], copy, False, failure.env
    )

    assert failed.returncode != 0
    assert failure.message in failed.stderr
    run_command(RECOVERY, copy)
    assert workspace(copy) == before
    assert "up to date" in dvc(copy, "status").stdout


def committed_copy(reproduced: Path, tmp_path: Path) -> Path:
    """A copy of the reproduced project with its outputs committed."""
    copy = tmp_path / "committed"
    shutil.copytree(reproduced, copy)
    run_command(["git", "add", "-A"], copy)
    run_command(["git", "commit", "-qm", "reproduced"], copy)
    return copy


def test_the_recovery_after_a_fresh_clone_s_first_run_failed(tmp_path: Path) -> None:
    """Nothing but code is committed: the failed first run's dvc.lock (staged by
    core.autostage) goes, params.yaml comes back, and git sees the clone as it was."""
    repo = make_project(tmp_path)
    committed = (repo / "params.yaml").read_text()
    edit_params(repo, empty_training_split)  # fetch succeeds, then normalize fails
    failed = run_command([sys.executable, "-m", "dvc", "repro"], repo, check=False)
    assert failed.returncode != 0 and "empty training or validation split" in failed.stderr
    assert (repo / "dvc.lock").is_file()
    run_command(RECOVERY, repo)
    assert (repo / "params.yaml").read_text() == committed
    assert not (repo / "dvc.lock").exists()
    assert run_command(["git", "status", "--porcelain"], repo).stdout == ""


def test_the_recovery_after_an_unwanted_repro_that_succeeded(
    reproduced: Path, tmp_path: Path
) -> None:
    """Another archive through fetch and normalize: core.autostage staged the new dvc.lock,
    from which a plain `git checkout --` would restore; the recovery restores HEAD's."""
    copy = committed_copy(reproduced, tmp_path)
    other = write_class_folder(copy / "fixture" / "other", "tar.gz", per_class_train=6)
    before = workspace(copy)
    edit_params(copy, lambda values: values["data"].update(source=str(other.relative_to(copy))))
    dvc(copy, "repro", "normalize")
    assert "M  dvc.lock" in run_command(["git", "status", "--porcelain"], copy).stdout
    run_command(RECOVERY, copy)
    assert workspace(copy) == before
    assert "up to date" in dvc(copy, "status").stdout


def test_the_recovery_after_a_stage_failed_once_it_wrote_its_model(
    reproduced: Path, tmp_path: Path
) -> None:
    """train writes its model (DVC-cached), then cannot log to MLflow's artifact folder (a file
    stands where the folder was): `dvc checkout` alone refuses to overwrite the modified
    model; the recovery restores it."""
    copy = committed_copy(reproduced, tmp_path)
    before = workspace(copy)
    model = copy / "models" / "plain-42.keras"
    shutil.rmtree(copy / "mlartifacts")
    (copy / "mlartifacts").write_text("not a folder")
    # A new experiment keeps its artifacts beside this copy's store (the copied store's own
    # experiment names the original project's folder).
    edit_params(copy, lambda values: values["mlflow"].update(experiment="late-failure"))
    failed = run_command(
        [sys.executable, "-m", "dvc", "repro", "train@plain-42"], copy, check=False
    )
    assert failed.returncode != 0
    # The operating system's refusal is one line naming the path, not a traceback.
    assert "Traceback" not in failed.stderr
    assert "error: the operating system refused a file operation (" in failed.stderr
    assert hashlib.sha256(model.read_bytes()).hexdigest() != before["models/plain-42.keras"]
    run_command(RECOVERY, copy)
    assert workspace(copy) == before


def changed_stages(repo: Path) -> set[str]:
    """The stages `dvc status` reports as changed."""
    return set(json.loads(dvc(repo, "status", "--json").stdout or "{}"))


def test_an_edit_reruns_only_the_stages_that_import_the_module(reproduced: Path) -> None:
    """The import graph's rule, seen through DVC: analysis code reruns `compare` alone (or no
    stage, where only `pipeline.ablation` imports it), the learning-curve figure only training,
    the confusion figure only evaluation."""
    analysis = sorted((reproduced / "pipeline/analysis").glob("*.py"))
    assert len(analysis) >= 8
    compared = code_closure("pipeline.compare", reproduced)
    trains = {f"train@{variant}-42" for variant in ("plain", "bn")}
    expected = {
        **{
            path: {"compare"} if str(path.relative_to(reproduced)) in compared else set()
            for path in analysis
        },
        reproduced / "pipeline/compare.py": {"compare"},
        reproduced / "pipeline/train.py": trains,
        reproduced / "pipeline/evaluate.py": {f"evaluate@{v}-42" for v in ("plain", "bn")},
    }
    assert changed_stages(reproduced) == set()
    for path, stages in expected.items():
        original = path.read_text()
        path.write_text(original + "\n# an edit\n")
        try:
            assert changed_stages(reproduced) == stages, path.name
        finally:
            path.write_text(original)
    assert changed_stages(reproduced) == set()
