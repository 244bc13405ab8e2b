"""The files one stage writes and another reads: one frozen model each, one reader/writer.

A field renamed or missing is then an error at the reader, with the fix, instead of a
KeyError deep in a stage; and what each file holds is written down once, in
pipeline/records/data.py (fetch's and normalize's) and pipeline/records/runs.py (tune's,
train's and evaluate's), apart so that an edit to one does not rerun the other's stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.common.errors import PipelineError
from pipeline.common.files import read_json, write_json


class Record(BaseModel):
    """A frozen record of a stage's output file."""

    model_config = ConfigDict(frozen=True, extra="forbid")


R = TypeVar("R", bound=Record)


def read_record(source: Path, kind: type[R]) -> R:
    """Read and check a record an earlier stage wrote."""
    payload: Any = read_json(source)
    try:
        return kind.model_validate(payload)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'the file'}: {item['msg']}"
            for item in error.errors()
        )
        raise PipelineError(
            f"{source} is not a {kind.__name__} record ({problems}): it is stale or was "
            "written by other code. Delete it and run `dvc repro`"
        ) from error


def write_record(target: Path, record: Record) -> None:
    """Write a record as indented JSON with sorted keys, atomically; unset (None) fields are
    left out, and read back as None."""
    write_json(target, record.model_dump(mode="json", exclude_none=True))
