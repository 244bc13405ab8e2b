"""Atomic file writes: an interrupted stage never leaves a half-written output."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common.errors import PipelineError


@contextlib.contextmanager
def atomic_paths(*targets: Path) -> Iterator[list[Path]]:
    """Yield a temporary path beside each target; rename them over the targets only when
    the block succeeds, so a failure leaves every target as it was."""
    temporaries: list[Path] = []
    try:
        for target in map(Path, targets):
            temporaries.append(_temporary_beside(target))
        yield temporaries
        for temporary, target in zip(temporaries, targets, strict=True):
            temporary.replace(target)
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only on success."""
    with atomic_paths(target) as (temporary,):
        yield temporary


@contextlib.contextmanager
def exclusive_lock(lock: Path) -> Iterator[None]:
    """One process of this machine at a time in the block: an exclusive lock on the file
    `lock`, which the others wait for (the operating system drops it if the holder dies)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def _temporary_beside(target: Path) -> Path:
    """An empty file in the target's folder (so the final rename is atomic)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # A process killed outright (SIGKILL) leaves its temporary behind; the next writer of
        # the same target removes it. (Two processes never write one output at once: DVC
        # locks the pipeline, and a stage's outputs are its own.)
        for stale in target.parent.glob(f".{target.stem}.*.tmp{target.suffix}"):
            stale.unlink(missing_ok=True)
        handle, temporary_name = tempfile.mkstemp(
            prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent
        )
    except OSError as error:
        raise PipelineError(
            f"cannot write {target}: {error.strerror}. "
            "Fix the folder's permissions or point the path elsewhere in params.yaml."
        ) from error
    os.close(handle)
    temporary = Path(temporary_name)
    # mkstemp creates 0600 files; outputs get the usual permissions (0644 under umask 022).
    umask = os.umask(0)
    os.umask(umask)
    temporary.chmod(0o666 & ~umask)
    return temporary


def write_json(target: Path, payload: Any) -> None:
    """Write `payload` as indented JSON, atomically."""
    with atomic_path(target) as temporary:
        _save_json(temporary, payload)


def write_text(target: Path, text: str) -> None:
    """Write text, atomically."""
    with atomic_path(target) as temporary:
        temporary.write_text(text)


def write_csv(target: Path, fields: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows as CSV with a header, atomically."""
    with atomic_path(target) as temporary, temporary.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_npz_and_json(
    npz_target: Path, arrays: dict[str, np.ndarray], json_target: Path, payload: Any
) -> None:
    """A stage's arrays and their report, committed together: on failure neither changes."""
    with atomic_paths(npz_target, json_target) as (npz_temporary, json_temporary):
        _save_npz(npz_temporary, arrays)
        _save_json(json_temporary, payload)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as stream:
        np.savez(stream, allow_pickle=False, **arrays)


def _save_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def array_digest(*arrays: np.ndarray) -> str:
    """sha256 of arrays' dtypes, shapes and bytes: equal digests mean equal data."""
    digest = hashlib.sha256()
    for array in arrays:
        contiguous = np.ascontiguousarray(array)
        digest.update(f"{contiguous.dtype}{contiguous.shape}".encode())
        digest.update(contiguous.data)
    return digest.hexdigest()


def read_npz(source: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read the named arrays of an .npz written by an earlier stage, without pickle."""
    if not Path(source).is_file():
        raise PipelineError(
            f"{source} does not exist: the stage that writes it has not run. Run `dvc repro`."
        )
    try:
        with np.load(source, allow_pickle=False) as archive:
            missing = [key for key in keys if key not in archive.files]
            if missing:
                raise PipelineError(
                    f"{source} lacks {', '.join(missing)}: it is stale or foreign. "
                    "Delete it and run `dvc repro`."
                )
            return {key: archive[key] for key in keys}
    except (OSError, ValueError) as error:
        raise PipelineError(
            f"{source} is unreadable ({error}). Delete it and run `dvc repro`."
        ) from error


def read_json(source: Path) -> Any:
    """Read a JSON file written by an earlier stage."""
    try:
        return json.loads(Path(source).read_text())
    except FileNotFoundError as error:
        raise PipelineError(
            f"{source} does not exist: the stage that writes it has not run. Run `dvc repro`."
        ) from error
    except json.JSONDecodeError as error:
        raise PipelineError(
            f"{source} is not valid JSON ({error}). Delete it and run `dvc repro`."
        ) from error
