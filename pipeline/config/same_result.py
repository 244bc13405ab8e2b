"""The settings marked SAME_RESULT (pipeline/config/section.py), as keys and pydantic excludes.

A study's identity (pipeline/tuning/spec.py) and the ablation's factors
(pipeline/analysis/grouping.py) leave these settings out.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from pipeline.config.messages import section_type
from pipeline.config.train_params import TrainParams


def same_result_fields(model: type[BaseModel] = TrainParams) -> dict[str, Any]:
    """The fields marked SAME_RESULT, as a pydantic `exclude` argument: a marked field (or
    section) maps to True, a section holding marked fields to the set or dict of them."""
    found: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra
        section = section_type(field.annotation)
        if isinstance(extra, dict) and extra.get("same_result"):
            found[name] = True
        elif section is not None and (inner := same_result_fields(section)):
            found[name] = set(inner) if all(value is True for value in inner.values()) else inner
    return found


def same_result_keys(prefix: str = "train", model: type[BaseModel] = TrainParams) -> set[str]:
    """The dotted keys (as MLflow's flattened params name them) of every SAME_RESULT setting."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra
        section = section_type(field.annotation)
        marked = isinstance(extra, dict) and extra.get("same_result")
        if section is not None:
            inner = same_result_keys(f"{prefix}.{name}", section)
            keys |= _leaf_keys(f"{prefix}.{name}", section) if marked else inner
        elif marked:
            keys.add(f"{prefix}.{name}")
    return keys


def _leaf_keys(prefix: str, model: type[BaseModel]) -> set[str]:
    """Every setting of a section, nested sections' included, as dotted keys."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        section = section_type(field.annotation)
        keys |= _leaf_keys(f"{prefix}.{name}", section) if section else {f"{prefix}.{name}"}
    return keys
