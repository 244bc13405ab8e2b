"""A grid's cells: every combination of its factors' values, crossed with variants and seeds.

A factor is a dotted key of params.yaml with the values it takes, as the command line writes
it: `train.learning_rate=1e-4,3.2e-4,1e-3`. Each value is read as YAML (`1e-3` and `true`
become a number and a bool where params.yaml would hold one). A cell's parameters are the
grid's base parameters with its factor values, its seed as the one training seed, and
tuning off: a grid trains each cell at the rate it names.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.common.errors import PipelineError
from pipeline.config.messages import describe_validation_error
from pipeline.config.params import Params

# Keys a factor may not set, and why: the fetch stage's (a worker reads the data the grid was
# declared on), the training seeds and variants (the grid crosses them itself), where files
# live, where runs and studies go, and the thread counts (each worker sets its own share).
REFUSED_FACTORS = {
    "seeds": "the grid's seeds come from --seeds",
    "paths": "a worker decides where its files go",
    "data.source": "a grid trains on the data it was declared on",
    "data.url": "a grid trains on the data it was declared on",
    "data.md5": "a grid trains on the data it was declared on",
    "data.subset": "a grid trains on the data it was declared on",
    "tune": "a grid trains each cell at its train.learning_rate, untuned",
    "mlflow": "every cell logs to the MLflow experiment of the grid",
    "train.speed.intra_op_threads": "each worker sets its share of the cores",
    "train.speed.inter_op_threads": "each worker sets its share of the cores",
}


@dataclass(frozen=True)
class Cell:
    """One training of the grid: factor values, a variant and a training seed."""

    number: int
    factors: dict[str, Any]
    variant: str
    seed: int

    def as_attr(self) -> dict[str, Any]:
        """The cell as its trial stores it (a user attribute: JSON)."""
        return {
            "number": self.number,
            "factors": self.factors,
            "variant": self.variant,
            "seed": self.seed,
        }

    @classmethod
    def from_attr(cls, attr: dict[str, Any]) -> Cell:
        """The cell `as_attr` stored."""
        return cls(
            int(attr["number"]), dict(attr["factors"]), str(attr["variant"]), int(attr["seed"])
        )

    def describe(self) -> str:
        """`train.learning_rate=0.001 bn seed 4`."""
        settings = " ".join(f"{key}={value}" for key, value in self.factors.items())
        return f"{settings} {self.variant} seed {self.seed}".strip()


def parse_factor(text: str) -> tuple[str, list[Any]]:
    """`key=v1,v2,...` as (key, values); one clear error for anything else."""
    key, separator, values = text.partition("=")
    key = key.strip()
    if not separator or not key or not values.strip():
        raise PipelineError(
            f"factor {text!r} is not key=value[,value...]; e.g. train.learning_rate=1e-4,1e-3"
        )
    for refused, reason in REFUSED_FACTORS.items():
        if key == refused or key.startswith(f"{refused}."):
            raise PipelineError(f"{key} cannot be a factor of a grid: {reason}")
    parsed = [_value(part.strip()) for part in values.split(",")]
    if len({json.dumps(value) for value in parsed}) != len(parsed):
        raise PipelineError(f"factor {key} repeats a value ({values}); give each value once")
    return key, parsed


def _value(text: str) -> Any:
    """A value as params.yaml would hold it; `1e-3` is a number (YAML 1.1 reads a string)."""
    value = yaml.safe_load(text) if text else text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def cross(factors: dict[str, list[Any]], variants: list[str], seeds: list[int]) -> list[Cell]:
    """Every cell, numbered seed by seed (then factor values, then variants): workers claim
    them in this order, so a grid stopped early holds every setting with as many seeds."""
    keys = list(factors)
    settings = list(itertools.product(*(factors[key] for key in keys)))
    cells: list[Cell] = []
    for seed, values, variant in itertools.product(seeds, settings, variants):
        cells.append(Cell(len(cells), dict(zip(keys, values, strict=True)), variant, seed))
    return cells


def cell_values(base: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """The params.yaml values of one cell: the base with its factors, its seed, tuning off."""
    values = copy.deepcopy(base)
    for key, value in cell.factors.items():
        set_dotted(values, key, value)
    values["seeds"] = [cell.seed]
    values.setdefault("tune", {})["n_trials"] = 0
    return values


def cell_params(base: dict[str, Any], cell: Cell) -> Params:
    """`cell_values`, validated; a value the params reject names the cell and the key."""
    try:
        params = Params.model_validate(cell_values(base, cell))
    except ValidationError as error:
        raise PipelineError(
            f"cell {cell.describe()}: {describe_validation_error(error, Params)}"
        ) from error
    params.variant(cell.variant)  # an unknown variant, named with the known ones
    return params


def set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in nested mappings, making the sections on the way."""
    *sections, last = key.split(".")
    for section in sections:
        values = values.setdefault(section, {})
        if not isinstance(values, dict):
            raise PipelineError(f"{key}: {section} is a setting, not a section of params.yaml")
    values[last] = value


def data_setting(params: Params) -> dict[str, Any]:
    """What the normalize stage reads: cells equal here train on the same prepared data."""
    return {
        "seed": params.seed,
        "data.val_fraction": params.data.val_fraction,
        "normalize": params.normalize.model_dump(mode="json"),
    }


def data_setting_key(params: Params) -> str:
    """A short name for `data_setting` (a folder name)."""
    text = json.dumps(data_setting(params), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
