"""DVC's run-cache: returning to params a stage ran with restores its outputs, here and, through
a remote, on another machine."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.config.params import load_params
from tests.conftest import RECOVERY, dvc, edit_params, run_command, trained_project, workspace

STAGE = "train@plain-42"
CACHED_RUN = "is cached - skipping run, checking out outputs"


def test_params_that_ran_before_are_restored_from_the_run_cache(
    tmp_path: Path,
) -> None:
    """At another learning rate and back, the third repro runs no stage and restores the
    first's outputs byte for byte; pushed with --run-cache, a fresh clone skips them too."""
    copy = trained_project(tmp_path, STAGE)
    first = workspace(copy)
    committed = (copy / "params.yaml").read_text()
    rate = load_params(copy / "params.yaml").train.learning_rate
    edit_params(copy, lambda values: values["train"].update(learning_rate=2 * rate))
    other = (copy / "params.yaml").read_text()
    started = time.perf_counter()
    assert "Running stage 'train@plain-42'" in dvc(copy, "repro", STAGE).stdout
    trained_seconds = time.perf_counter() - started

    (copy / "params.yaml").write_text(committed)
    started = time.perf_counter()
    back = dvc(copy, "repro", STAGE).stdout
    restored_seconds = time.perf_counter() - started

    assert "Running stage" not in back
    assert f"Stage '{STAGE}' {CACHED_RUN}" in back
    assert workspace(copy) == first
    print(f"\nat 2x the rate: {trained_seconds:.1f} s; back: {restored_seconds:.1f} s")
    print("\n".join(line for line in back.splitlines() if CACHED_RUN in line))

    # Another machine: the run-cache's entries (`push --run-cache`) and the outputs they name
    # (`dvc push` at each rate) on a shared remote.
    dvc(copy, "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    dvc(copy, "push", "--run-cache")
    (copy / "params.yaml").write_text(other)
    dvc(copy, "repro", STAGE)  # restored from the run-cache: its outputs are in the workspace
    dvc(copy, "push")
    run_command(RECOVERY, copy)
    dvc(copy, "push")
    run_command(["git", "commit", "-qam", "a remote"], copy)
    clone = tmp_path / "clone"
    run_command(["git", "clone", "-q", str(copy), str(clone)], tmp_path)
    dvc(clone, "pull", "--run-cache", "--with-deps", STAGE)
    (clone / "params.yaml").write_text(other)
    elsewhere = dvc(clone, "repro", "--pull", STAGE).stdout
    assert "Running stage" not in elsewhere
    assert f"Stage '{STAGE}' {CACHED_RUN}" in elsewhere
