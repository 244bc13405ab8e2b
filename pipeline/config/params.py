"""Typed, validated parameters: the only code that reads params.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.common.errors import PipelineError
from pipeline.config.messages import describe_validation_error
from pipeline.config.section import PositiveFloat, PositiveInt, Section
from pipeline.config.train_params import TrainParams, VariantOverrides

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
OFFICIAL_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"


class PathsParams(Section):
    """Where each stage reads and writes; dvc.yaml interpolates the same values."""

    download_cache: Path = Path(".cache/downloads")
    raw_dataset: Path = Path("data/raw/cifar10.npz")
    provenance: Path = Path("data/raw/provenance.json")
    prepared_dataset: Path = Path("data/prepared/cifar10.npz")
    normalization_stats: Path = Path("data/prepared/stats.json")
    models: Path = Path("models")
    results: Path = Path("results")
    comparison: Path = Path("comparison")
    report: Path = Path("reports/report.html")


class DataParams(Section):
    """Where CIFAR-10 comes from and how much of it is used."""

    source: str = Field(
        default="official",
        description="'official' (download the binary release) or a local path / URL",
    )
    url: str = OFFICIAL_URL
    md5: str = Field(default=OFFICIAL_MD5, pattern=r"^[0-9a-f]{32}$")
    subset: PositiveInt | None = Field(
        default=None, description="at most this many images per split, stratified and seeded"
    )
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.1,
        description="training images held out for validation; 0 trains on all of them, "
        "which needs train.validation_data: test",
    )


class NormalizeParams(Section):
    """How pixels are normalized."""

    method: Literal["standardize", "scale", "article"] = "standardize"


class PrunerParams(Section):
    """Optuna pruner and its settings; steps are epochs completed."""

    kind: Literal["successive_halving", "hyperband", "median", "none"] = "successive_halving"
    n_startup_trials: Annotated[int, Field(ge=0)] = 4
    n_warmup_steps: Annotated[int, Field(ge=0)] = 1
    min_resource: PositiveInt = 1
    reduction_factor: Annotated[int, Field(ge=2)] = 3


class TuneParams(Section):
    """Optuna learning-rate search; n_trials 0 switches it off."""

    n_trials: Annotated[int, Field(ge=0)] = 0
    lr_low: PositiveFloat = 1e-5
    lr_high: PositiveFloat = 1e-1
    subset: PositiveInt | None = Field(
        default=None, description="training images per trial (None: the whole split)"
    )
    sampler_seed: int = 0
    try_default_first: bool = True
    pruner: PrunerParams = PrunerParams()
    storage: str | None = Field(
        default=None,
        description="None for optuna.journal at the repo root, 'journal:<file>', or an "
        "SQLAlchemy URL (sqlite:///optuna.db, postgresql://user@host/db)",
    )

    @field_validator("storage")
    @classmethod
    def _storage_is_a_url_or_journal(cls, storage: str | None) -> str | None:
        if storage is None:
            return None
        if storage.startswith("journal:"):
            if not storage.removeprefix("journal:"):
                raise ValueError("journal: needs a file, e.g. journal:optuna.journal")
            return storage
        if "://" not in storage:
            raise ValueError(
                "must be journal:<file> or an SQLAlchemy URL such as sqlite:///optuna.db "
                "or postgresql://user@host/db"
            )
        return storage

    @field_validator("lr_high")
    @classmethod
    def _range_is_ordered(cls, lr_high: float, info: Any) -> float:
        lr_low = info.data.get("lr_low")
        if lr_low is not None and lr_high <= lr_low:
            raise ValueError(f"must be greater than tune.lr_low ({lr_low})")
        return lr_high


class MlflowParams(Section):
    """Run tracking."""

    experiment: Annotated[str, Field(min_length=1)] = "bn-cifar10"
    log_model: bool = True


VariantName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]


class Params(Section):
    """The whole of params.yaml."""

    seed: Annotated[int, Field(ge=0)] = 42
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = [42]
    paths: PathsParams = PathsParams()
    data: DataParams = DataParams()
    normalize: NormalizeParams = NormalizeParams()
    train: TrainParams = TrainParams()
    variants: Annotated[dict[VariantName, VariantOverrides], Field(min_length=1)]
    tune: TuneParams = TuneParams()
    mlflow: MlflowParams = MlflowParams()

    @model_validator(mode="after")
    def _validation_data_exists(self) -> Params:
        if self.data.val_fraction == 0 and self.train.validation_data == "split":
            raise ValueError(
                "data.val_fraction 0 leaves no validation split: set "
                "train.validation_data: test (the article's choice) or a val_fraction above 0"
            )
        return self

    @model_validator(mode="after")
    def _run_names_are_distinct(self) -> Params:
        # A variant's results folder (results/<variant>/) and DVC stage names
        # (train@<variant>-<seed>, config/layout.run_name) must not be another variant's run:
        # variant "bn-42" would share results/bn-42/ with variant "bn" at seed 42, and DVC
        # refuses overlapping outputs.
        runs = {f"{other}-{seed}": (other, seed) for other in self.variants for seed in self.seeds}
        for variant in self.variants:
            if variant in runs:
                other, seed = runs[variant]
                raise ValueError(
                    f"variant {variant!r} is also the name of variant {other!r} at seed {seed} "
                    f"(its stages and results/{variant}/ would clash): rename the variant so "
                    "that it is not <another variant>-<seed>"
                )
        return self

    @field_validator("seeds")
    @classmethod
    def _seeds_are_distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("must not repeat a seed")
        return seeds

    def variant(self, name: str) -> TrainParams:
        """The effective training settings of one variant: `train` with its overrides."""
        if name not in self.variants:
            known = ", ".join(self.variants)
            raise PipelineError(f"unknown variant {name!r}; params.yaml defines: {known}")
        overrides = self.variants[name].model_dump(exclude_unset=True)
        return TrainParams.model_validate(_deep_merge(self.train.model_dump(), overrides))


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied key by key, recursing into nested sections."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate params.yaml; any problem becomes one PipelineError line."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as error:
        raise PipelineError(
            f"{path} not found: run from the project root or pass --params"
        ) from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PipelineError(
            f"{path} is not valid YAML{where}: {getattr(error, 'problem', error)}; "
            "fix the syntax (indentation, colons, quotes)"
        ) from error
    if not isinstance(raw, dict):
        raise PipelineError(f"{path} must be a mapping of sections (data:, train:, ...)")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise PipelineError(f"{path}: {describe_validation_error(error, Params)}") from error
