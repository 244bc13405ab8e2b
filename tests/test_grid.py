"""A grid's declaration: factors, cells, the checks on what it runs on, and its refusals.

The grid run end to end, against the DVC queue, is in tests/test_queue.py; on PostgreSQL
and an `mlflow server` with several workers, and a worker killed mid-cell, in
tests/test_scale_out.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pipeline import grid
from pipeline.common.errors import PipelineError
from pipeline.grids.cells import Cell, cell_params, cross, parse_factor
from pipeline.grids.progress import cell_rows, counts
from pipeline.grids.study import open_grid
from pipeline.tuning.storage import open_storage
from tests.conftest import make_project, run_command, small_values


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed project whose fetch stage has run (no TensorFlow: nothing trains here)."""
    repo = make_project(tmp_path_factory.mktemp("grid"))
    run_command([sys.executable, "-m", "pipeline.fetch"], repo)
    return repo


def grid_command(repo: Path, *args: str, check: bool = True) -> str:
    """`python -m pipeline.grid ARGS` in `repo`; returns its stdout (its stderr on failure)."""
    result = run_command([sys.executable, "-m", "pipeline.grid", *args], repo, check=check)
    return result.stdout if result.returncode == 0 else result.stderr


def test_a_factor_is_a_dotted_key_with_values_read_as_yaml() -> None:
    assert parse_factor("train.learning_rate=1e-4,3.2e-4") == (
        "train.learning_rate",
        [1e-4, 3.2e-4],
    )
    assert parse_factor("normalize.method=article,standardize") == (
        "normalize.method",
        ["article", "standardize"],
    )
    assert parse_factor("train.augmentation.horizontal_flip=true,false")[1] == [True, False]
    for text, fragment in (
        ("train.learning_rate", "is not key=value"),
        ("seeds=1,2", "come from --seeds"),
        ("data.source=a.tar.gz,b.tar.gz", "the data it was declared on"),
        ("train.speed.intra_op_threads=1,2", "share of the cores"),
        ("train.epochs=1,1", "repeats a value"),
    ):
        with pytest.raises(PipelineError, match=fragment):
            parse_factor(text)


def test_cells_are_numbered_seed_by_seed() -> None:
    cells = cross({"train.learning_rate": [0.01, 0.001]}, ["plain", "bn"], [1, 2])
    assert [(cell.seed, cell.factors["train.learning_rate"], cell.variant) for cell in cells] == [
        (1, 0.01, "plain"),
        (1, 0.01, "bn"),
        (1, 0.001, "plain"),
        (1, 0.001, "bn"),
        (2, 0.01, "plain"),
        (2, 0.01, "bn"),
        (2, 0.001, "plain"),
        (2, 0.001, "bn"),
    ]
    assert [cell.number for cell in cells] == list(range(8))


def test_a_cell_s_params_are_the_base_with_its_values_and_its_seed() -> None:
    base = small_values(tune={"n_trials": 5})
    cell = Cell(3, {"train.learning_rate": 0.01, "variants.bn.bn_momentum": 0.9}, "bn", 7)
    params = cell_params(base, cell)
    assert params.seeds == [7]
    assert params.tune.n_trials == 0  # a grid trains at the cell's rate, untuned
    assert params.variant("bn").learning_rate == 0.01
    assert params.variant("bn").bn_momentum == 0.9
    assert params.variant("plain").bn_momentum == base["train"]["bn_momentum"]
    with pytest.raises(PipelineError, match=r"cell train.learning_rate=-1 bn seed 7: .*learning"):
        cell_params(base, Cell(0, {"train.learning_rate": -1}, "bn", 7))


def test_declare_enqueues_every_cell_with_its_commit_and_data(fetched: Path) -> None:
    out = grid_command(
        fetched, "declare", "lr", "--factor", "train.learning_rate=0.01,0.001", "--seeds", "1-2"
    )
    assert "grid lr: 8 cells" in out
    storage = open_storage(f"journal:{fetched / 'optuna.journal'}")
    study, declaration = open_grid("lr", storage)
    head = run_command(["git", "rev-parse", "HEAD"], fetched).stdout.strip()
    assert declaration.lineage.git_commit == head
    assert declaration.seeds == [1, 2] and declaration.variants == ["plain", "bn"]
    trials = study.get_trials(deepcopy=False)
    assert [trial.state for trial in trials] == [TrialState.WAITING] * 8
    rows = cell_rows(study)
    assert counts(rows) == {"done": 0, "diverged": 0, "running": 0, "failed": 0, "waiting": 8}
    assert rows[5].setting == "train.learning_rate=0.01 bn seed 2"
    status = grid_command(fetched, "status", "lr", "--cells")
    assert "grid lr: 8 cells: 0 done, 0 diverged, 0 running, 0 failed, 8 waiting" in status
    assert "| 5 | train.learning_rate=0.01 bn seed 2 | waiting |" in status
    # The same name twice, or a value the params reject, is refused before anything is queued.
    again = grid_command(fetched, "declare", "lr", "--seeds", "3", check=False)
    assert again.strip().splitlines()[-1].startswith("error: the storage already holds a study")
    bad = grid_command(
        fetched, "declare", "bad", "--factor", "train.batch_size=0", "--seeds", "1", check=False
    )
    assert "error: cell train.batch_size=0 plain seed 1:" in bad
    assert "bad" not in optuna.get_all_study_names(storage)


def test_a_worker_refuses_other_code_or_other_data(fetched: Path) -> None:
    grid_command(fetched, "declare", "lineage", "--factor", "train.epochs=1", "--seeds", "1")
    declared = run_command(["git", "rev-parse", "HEAD"], fetched).stdout.strip()
    model = fetched / "pipeline" / "training" / "model.py"
    model.write_text(model.read_text() + "\n# changed\n")
    uncommitted = grid_command(fetched, "work", "lineage", check=False)
    assert "error: pipeline/ has uncommitted changes (pipeline/training/model.py)" in uncommitted
    run_command(["git", "commit", "-qam", "other code"], fetched)
    other_code = grid_command(fetched, "work", "lineage", check=False)
    assert (
        f"error: grid lineage was declared on commit {declared[:12]}; this checkout is at"
        in other_code
    )
    assert f"`git checkout {declared[:12]}`" in other_code
    run_command(["git", "checkout", "-q", declared], fetched)
    params = (fetched / "params.yaml").read_text()
    (fetched / "other.yaml").write_text(params.replace("subset: null", "subset: 3"))
    run_command([sys.executable, "-m", "pipeline.fetch", "--params", "other.yaml"], fetched)
    other_data = grid_command(fetched, "work", "lineage", check=False)
    assert "error: grid lineage was declared on data" in other_data
    assert "`dvc pull fetch` or `dvc repro fetch`" in other_data
    storage = open_storage(f"journal:{fetched / 'optuna.journal'}")
    study, _ = open_grid("lineage", storage)
    assert [trial.state for trial in study.get_trials(deepcopy=False)] == [TrialState.WAITING] * 2


def test_an_unknown_grid_is_named_with_those_that_exist(fetched: Path) -> None:
    grid_command(fetched, "declare", "known", "--seeds", "1")
    missing = grid_command(fetched, "status", "unknown", check=False)
    assert "error: no grid called unknown in this storage (grids here:" in missing
    assert "known" in missing


def test_seeds_are_numbers_or_ranges() -> None:
    args = grid.parser().parse_args(["declare", "g", "--seeds", "1-3", "7,9"])
    assert sorted({seed for group in args.seeds for seed in group}) == [1, 2, 3, 7, 9]
