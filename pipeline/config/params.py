"""Typed, validated parameters: the only code that reads params.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from pipeline.common.errors import PipelineError
from pipeline.config.messages import describe_validation_error

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
OFFICIAL_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Activation = Literal["sigmoid", "relu", "tanh", "elu", "gelu", "swish"]
# Where RMSprop adds its epsilon (pipeline/training/optimizers.py): inside_sqrt,
# lr·g / sqrt(v + eps) as in Keras 3; outside_sqrt, lr·g / (sqrt(v) + eps) as in Keras up to 2.3.
RmspropEpsilon = Literal["inside_sqrt", "outside_sqrt"]
FillMode = Literal["nearest", "reflect"]  # the modes that sample as ImageDataGenerator does
# Marks a setting that cannot change what a run learns, only how it is resourced, probed or
# checkpointed: a study's identity (pipeline/tuning/spec.py) and the ablation's factors
# (pipeline/analysis/grouping.py) leave these out. Declared on the field, once.
SAME_RESULT: dict[str, Any] = {"same_result": True}


class Section(BaseModel):
    """A frozen section of params.yaml that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


class AugmentationParams(Section):
    """One random affine warp per training image, about its centre, with the semantics of
    Keras' ImageDataGenerator (pipeline/training/augment.py)."""

    shear_degrees: Annotated[float, Field(ge=0, lt=90)] = Field(
        default=11.3, description="shear angle along x drawn from ±this many degrees"
    )
    zoom: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.2, description="zoom factors drawn from [1 - zoom, 1 + zoom]"
    )
    independent_zoom: bool = Field(
        default=False, description="draw x and y zoom apart (the aspect ratio changes)"
    )
    width_shift: Annotated[float, Field(ge=0, lt=1)] = 0.0
    height_shift: Annotated[float, Field(ge=0, lt=1)] = 0.0
    horizontal_flip: bool = True
    fill_mode: FillMode = "reflect"


class VariantSettings(Section):
    """Everything a variant may override; shared defaults live in `train`."""

    batch_norm: bool = False
    bn_position: Literal["after_activation", "before_activation"] = "after_activation"
    activation: Activation = "sigmoid"
    optimizer: Literal["rmsprop", "adam", "sgd"] = "rmsprop"
    rmsprop_epsilon: RmspropEpsilon = "inside_sqrt"
    learning_rate: PositiveFloat = 1e-3
    batch_size: PositiveInt = 32
    epochs: PositiveInt = 10
    bn_momentum: Annotated[float, Field(gt=0, lt=1)] = 0.99
    augmentation: AugmentationParams = AugmentationParams()


class SpeedParams(Section):
    """How training runs, not what it computes: docs/speed.md has each measured effect."""

    jit_compile: bool = Field(default=False, description="compile the training step with XLA")
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = Field(
        default="float32",
        description="compute dtype of convolutions and dense layers (weights stay float32); "
        "mixed_float16 scales the loss; bfloat16 is fast only on CPUs with native bfloat16",
    )
    float32_nonlinearities: bool = Field(
        default=True,
        description="with a mixed precision, compute activations and BatchNormalization in "
        "float32: a sigmoid output above ~0.996 rounds to 1.0 in bfloat16 and its gradient to 0",
    )
    # The same steps, the same weights (tests/test_train.py, steps_per_execution).
    steps_per_execution: PositiveInt = Field(
        default=1,
        description="training steps per call into TensorFlow (fewer Python round trips)",
        json_schema_extra=SAME_RESULT,
    )
    fused_batch_norm: bool = Field(
        default=True,
        description="train BatchNormalization with TensorFlow's fused kernel (same function)",
    )
    intra_op_threads: Annotated[int, Field(ge=0)] = Field(
        default=0,
        description="threads inside one op; 0 lets TensorFlow use every core",
        json_schema_extra=SAME_RESULT,
    )
    inter_op_threads: Annotated[int, Field(ge=0)] = Field(
        default=0,
        description="ops run at once; 0 lets TensorFlow decide",
        json_schema_extra=SAME_RESULT,
    )


class LandscapeParams(Section):
    """The loss landscape along training's own steps, as Santurkar et al. (2018) measure it
    (pipeline/evidence/landscape.py): loss variation, gradient change and effective
    beta-smoothness."""

    every_steps: Annotated[int, Field(ge=0)] = Field(
        default=0, description="measure every this many training steps; 0: off"
    )
    until_step: Annotated[int, Field(ge=0)] = Field(
        default=0, description="the last training step measured; 0: to the end of training"
    )
    direction: Literal["optimizer_update", "gradient"] = Field(
        default="optimizer_update",
        description="optimizer_update: along the step the optimizer would take (RMSprop's "
        "update, which rescales each weight's gradient: this project's variant); gradient: "
        "along -gradient, as Santurkar et al. measure it (with SGD, the same direction)",
    )
    step_multiples: Annotated[list[PositiveFloat], Field(min_length=1)] = Field(
        default=[0.25, 0.5, 1.0, 2.0, 4.0],
        description="the steps tried, as multiples of the learning rate training uses",
    )
    step_sizes: Annotated[list[PositiveFloat], Field(min_length=1)] | None = Field(
        default=None,
        description="the steps tried, as absolute rates (replacing step_multiples): the "
        "paper's run up to just below the rate at which the network without "
        "BatchNormalization diverges",
    )


class ProbeParams(Section):
    """Per-layer gradient and pre-activation probes (pipeline/evidence/probes.py), and the
    landscape."""

    interval: Annotated[int, Field(ge=0)] = Field(
        default=1, description="probe every this many epochs, and after the last; 0: off"
    )
    images: PositiveInt = Field(default=256, description="size of the fixed probe batch")
    landscape: LandscapeParams = LandscapeParams()


class TrainParams(VariantSettings):
    """Training settings shared by every variant, plus the article's quirks as options."""

    validation_data: Literal["split", "test"] = Field(
        default="split",
        description="'test' validates on the test set, as the article does (not recommended)",
    )
    epoch_fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        default=1.0, description="share of the training split seen per epoch (article: 0.5)"
    )
    deterministic: bool = True
    resume: bool = Field(
        default=False,
        description="checkpoint every epoch; a rerun after an interruption continues from the "
        "last completed epoch instead of starting over",
        json_schema_extra=SAME_RESULT,
    )
    speed: SpeedParams = SpeedParams()
    # Probing leaves training bit-identical (tests/test_probes.py).
    probe: ProbeParams = Field(default=ProbeParams(), json_schema_extra=SAME_RESULT)

    def with_learning_rate(self, learning_rate: float) -> TrainParams:
        """These settings at another learning rate, validated like params.yaml's."""
        try:
            return TrainParams.model_validate({**self.model_dump(), "learning_rate": learning_rate})
        except ValidationError as error:
            raise PipelineError(
                f"learning rate {learning_rate!r}: {describe_validation_error(error, TrainParams)}"
            ) from error

    @model_validator(mode="after")
    def _xla_is_not_silently_off(self) -> TrainParams:
        # Keras quietly compiles without XLA while TensorFlow's op determinism is on.
        if self.speed.jit_compile and self.deterministic:
            raise ValueError(
                "train.speed.jit_compile needs train.deterministic: false (Keras turns XLA "
                "off under op determinism)"
            )
        return self


def _overrides_of(settings: type[Section]) -> type[Section]:
    """`settings` with every field optional and unset by default: what a variant may change.

    Derived, not written out, so a setting added to VariantSettings can be overridden per
    variant at once, with the same types and bounds."""
    fields: dict[str, Any] = {}
    for name, field in settings.model_fields.items():
        constrained: Any = (
            Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        )
        fields[name] = (constrained | None, None)
    return create_model("VariantOverrides", __base__=Section, **fields)


# A variant: the `train` settings it changes. Unset fields inherit from `train`. Type checkers
# cannot follow a class made at run time; to them it is VariantSettings, whose fields it has.
if TYPE_CHECKING:
    VariantOverrides = VariantSettings
else:
    VariantOverrides = _overrides_of(VariantSettings)


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
        # (train@<variant>-<seed>) must not be another variant's run: variant "bn-42" would
        # share results/bn-42/ with variant "bn" at seed 42, and DVC refuses overlapping outputs.
        for variant in self.variants:
            for other in self.variants:
                for seed in self.seeds:
                    if variant == f"{other}-{seed}":
                        raise ValueError(
                            f"variant {variant!r} is also the name of variant {other!r} at seed "
                            f"{seed} (its stages and results/{variant}/ would clash): rename "
                            "the variant so that it is not <another variant>-<seed>"
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
