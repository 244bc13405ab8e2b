"""params.yaml's validation errors as one line: each bad key by its full path, typos with the
closest valid key."""

from __future__ import annotations

import difflib
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError


def describe_validation_error(error: ValidationError, root: type[BaseModel]) -> str:
    """One line naming each bad key by its full path, with the closest valid key of `root`'s
    schema for typos."""
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            problem = f"unknown key {key!r}"
            suggestion = closest_key(item["loc"], root)
            if suggestion:
                problem += f" (did you mean {suggestion!r}?)"
        elif item["type"] == "missing":
            problem = f"{key} is required"
        elif isinstance(item.get("input"), dict):
            # A check across keys: its message names them; the whole section would be noise.
            message = item["msg"].removeprefix("Value error, ")
            problem = f"{key}: {message}" if key else message
        else:
            message = item["msg"].removeprefix("Value error, ")
            problem = f"{key}: {message} (got {item.get('input')!r})"
        problems.append(problem)
    return "; ".join(problems)


def closest_key(location: tuple[Any, ...], root: type[BaseModel]) -> str | None:
    """The valid key nearest to the unknown last element of `location`, as a full path."""
    model: Any = root
    for part in location[:-1]:
        if isinstance(model, dict):  # a user-named key (a variant): its values' schema
            model = model["*"]
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        if get_origin(field.annotation) is dict:
            model = {"*": section_type(get_args(field.annotation)[1])}
            continue
        model = section_type(field.annotation)
        if model is None:
            return None
    if isinstance(model, dict) or not hasattr(model, "model_fields"):
        return None
    name = str(location[-1])
    # A key renamed by adding a unit (shear → shear_degrees) is no close match, but a prefix.
    matches = difflib.get_close_matches(name, list(model.model_fields), n=1) or [
        field for field in model.model_fields if field.startswith(name)
    ]
    if not matches:
        return None
    return ".".join([*(str(part) for part in location[:-1]), matches[0]])


def section_type(annotation: Any) -> Any:
    """The model class inside an annotation such as `AugmentationParams | None`, or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        if isinstance(argument, type) and issubclass(argument, BaseModel):
            return argument
    return None
