"""The records of the data stages: fetch's provenance and normalize's statistics."""

from __future__ import annotations

from typing import Literal

from pipeline.records import Record


class Provenance(Record):
    """`fetch`'s report of the dataset it decoded: where from, its checksum, its counts."""

    source: str
    location: str
    url: str | None = None
    md5_verified: str | None = None
    format: str
    container: str
    sha256: str
    sha256_of: str
    class_names: list[str]
    counts: dict[str, dict[str, int]]
    total: dict[str, int]
    source_total: dict[str, int]
    subset: int | None = None


class NormalizationStats(Record):
    """`normalize`'s parameters, from the training split only (pixel units, 0-255), and the
    counts and moments of what it wrote. The exported model bakes the same transform in."""

    method: Literal["standardize", "scale", "article"]
    mean: list[float] | None = None  # standardize
    std: list[float] | None = None
    scale: float | None = None  # scale
    axis: int | None = None  # article: keras.utils.normalize(x, axis, order)
    order: int | None = None
    counts: dict[str, int] = {}
    normalized_moments: dict[str, dict[str, list[float]]] = {}
