"""The base of every params.yaml section, the constrained types they share, and the mark of
settings that cannot change a result."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
# checkpointed: a study's identity (pipeline/tuning/spec.py) and the ablation's factors
# (pipeline/analysis/grouping.py) leave these out. Declared on the field, once.
SAME_RESULT: dict[str, Any] = {"same_result": True}


class Section(BaseModel):
    """A frozen section of params.yaml that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)
