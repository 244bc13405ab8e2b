"""params.yaml's training settings: what a variant may override, how training runs, what it
probes, and the per-variant overrides derived from them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, ValidationError, create_model, model_validator

from pipeline.common.errors import PipelineError
from pipeline.config.messages import describe_validation_error
from pipeline.config.section import SAME_RESULT, PositiveFloat, PositiveInt, Section

Activation = Literal["sigmoid", "relu", "tanh", "elu", "gelu", "swish"]
# Where RMSprop adds its epsilon (pipeline/training/optimizers.py): inside_sqrt,
# lr·g / sqrt(v + eps) as in Keras 3; outside_sqrt, lr·g / (sqrt(v) + eps) as in Keras up to 2.3.
RmspropEpsilon = Literal["inside_sqrt", "outside_sqrt"]
FillMode = Literal["nearest", "reflect"]  # the modes that sample as ImageDataGenerator does


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
    sgd_momentum: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.0, description="momentum of optimizer sgd (Keras' default: 0, none)"
    )
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
