"""One cell through the stages' own functions: normalize (once per data setting and machine),
tune (which passes the cell's rate through), train and evaluate, exactly as `dvc repro` runs
them for `train@<variant>-<seed>` and `evaluate@<variant>-<seed>`.

The cell reads the workspace's fetched data and writes its files to a scratch folder, removed
afterwards: what it keeps is its MLflow run (metrics, artifacts, the model), named and
tagged as a DVC-run training is, plus the grid and the cell.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.common.files import exclusive_lock
from pipeline.config.layout import Stores, variant_files
from pipeline.config.params import Params
from pipeline.grids.cells import Cell, cell_values, data_setting_key, set_dotted
from pipeline.records import read_record
from pipeline.records.runs import RunLink
from pipeline.tracking import names

GRID_CACHE = Path(".cache") / "grids"


@dataclass(frozen=True)
class CellResult:
    """What a finished cell reports to its trial."""

    test_accuracy: float
    run_id: str


def cell_run_params(
    base: dict[str, object], cell: Cell, root: Path, scratch: Path, threads: int
) -> Params:
    """The cell's params with its own file layout: the workspace's fetched data, prepared
    data shared by the cells of one data setting, everything else under `scratch`."""
    values = cell_values(base, cell)
    declared = Params.model_validate(values)
    paths = declared.paths
    prepared = root / GRID_CACHE / "data" / data_setting_key(declared)
    values["paths"] = {
        **paths.model_dump(mode="json"),
        "raw_dataset": str(root / paths.raw_dataset),
        "provenance": str(root / paths.provenance),
        "download_cache": str(root / paths.download_cache),
        "prepared_dataset": str(prepared / paths.prepared_dataset.name),
        "normalization_stats": str(prepared / paths.normalization_stats.name),
        "results": str(scratch / "results"),
        "models": str(scratch / "models"),
        "comparison": str(scratch / "comparison"),
        "report": str(scratch / "report.html"),
    }
    set_dotted(values, "train.speed.intra_op_threads", threads)
    return Params.model_validate(values)


def run_cell(
    base: dict[str, object],
    cell: Cell,
    grid: str,
    stores: Stores,
    threads: int,
) -> CellResult:
    """Normalize if needed, then tune (pass-through), train and evaluate the cell."""
    from pipeline import evaluate, normalize, train, tune

    scratch = stores.root / GRID_CACHE / grid / f"cell-{cell.number}-{os.getpid()}"
    params = cell_run_params(base, cell, stores.root, scratch, threads)
    tagged = Stores(
        stores.root,
        stores.tracking_uri,
        {names.GRID_TAG: grid, names.GRID_CELL_TAG: str(cell.number)},
    )
    try:
        # One worker of this machine prepares a data setting; the others wait for it.
        with exclusive_lock(params.paths.prepared_dataset.parent / ".lock"):
            if not (
                params.paths.prepared_dataset.is_file()
                and params.paths.normalization_stats.is_file()
            ):
                normalize.run(params)
        tune.run(params, cell.variant, tagged)
        train.run(params, cell.variant, cell.seed, tagged)
        metrics = evaluate.run(params, cell.variant, cell.seed, tagged)
        link = read_record(variant_files(params.paths, cell.variant, cell.seed).run, RunLink)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return CellResult(metrics.test_accuracy, link.run_id)
