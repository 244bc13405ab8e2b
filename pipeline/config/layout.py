"""Where each variant's outputs live, under the folders named in params.yaml `paths`.

dvc.yaml declares the same files; tests/test_dvc_yaml.py keeps the two in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config.params import PathsParams

MLFLOW_DB = "mlflow.db"  # the default MLflow store, at the project root

# The arrays of the fetched (raw) and the normalized (prepared) dataset files.
RAW_KEYS = ("x_train", "y_train", "x_test", "y_test", "class_names")
PREPARED_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "class_names")


@dataclass(frozen=True)
class VariantFiles:
    """The files of one variant and training seed: the variant's tuned learning rate, and what
    its train and evaluate stages write for that seed."""

    model: Path
    tuned: Path
    run: Path
    history: Path
    train_metrics: Path
    learning_curves: Path
    probes: Path
    preactivations: Path
    landscape: Path
    test_metrics: Path
    confusion: Path
    confusion_png: Path


def run_name(variant: str, seed: int) -> str:
    """`<variant>-<seed>`: the suffix of its DVC stages (train@plain-42) and its folder."""
    return f"{variant}-{seed}"


def tuned_file(paths: PathsParams, variant: str) -> Path:
    """The learning rate `tune@<variant>` chose, shared by every seed of the variant."""
    return paths.results / variant / "tuned.json"


def variant_files(paths: PathsParams, variant: str, seed: int) -> VariantFiles:
    """The files of `variant` trained with `seed`."""
    folder = paths.results / run_name(variant, seed)
    return VariantFiles(
        model=paths.models / f"{run_name(variant, seed)}.keras",
        tuned=tuned_file(paths, variant),
        run=folder / "mlflow_run.json",
        history=folder / "history.csv",
        train_metrics=folder / "train_metrics.json",
        learning_curves=folder / "learning_curves.png",
        probes=folder / "probes.csv",
        preactivations=folder / "preactivations.json",
        landscape=folder / "landscape.csv",
        test_metrics=folder / "test_metrics.json",
        confusion=folder / "confusion.csv",
        confusion_png=folder / "confusion.png",
    )


@dataclass(frozen=True)
class Stores:
    """What a stage records to outside its outputs: the project root (checkpoints, GPU
    claims, the default stores) and the MLflow tracking URI. `main()` builds it from the
    environment (`Stores.from_environment`); tests pass their own."""

    root: Path
    tracking_uri: str
    # Added to the tags of every MLflow run the stage starts (a grid's cell: its grid and cell).
    run_tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_environment(cls) -> Stores:
        """DVC_ROOT (or the cwd), and MLFLOW_TRACKING_URI or the SQLite store at that root."""
        root = project_root()
        return cls(root, os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / MLFLOW_DB}")


def project_root() -> Path:
    """The repository the stores belong to: DVC_ROOT inside `dvc exp run`, else the cwd.

    DVC runs queued and temporary experiments in a copy of the repository and points
    DVC_ROOT at the real one, so anchoring there puts every experiment in one store.
    """
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
