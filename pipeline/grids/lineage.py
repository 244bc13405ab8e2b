"""What a grid was declared on, the code and the data, and the check that a worker has both.

The code is the git commit, with no uncommitted change under pipeline/. The data is the
fetch stage's output (the raw arrays): every cell prepares its own normalized data from it
with the normalize stage's function, so a factor may change the normalization. The digest
is of the arrays, not of the .npz file, whose zip entries carry the time they were written.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.common.errors import PipelineError
from pipeline.common.files import array_digest, read_npz
from pipeline.config.params import Params
from pipeline.records import read_record
from pipeline.records.data import Provenance

CODE_FOLDER = "pipeline"
DIGESTED_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Lineage:
    """The commit and the data a grid runs on."""

    git_commit: str
    data_digest: str  # array_digest of the fetched arrays
    source_sha256: str  # the source archive's, as fetch's provenance records it

    def describe(self) -> str:
        return f"commit {self.git_commit[:12]}, data {self.data_digest[:12]}"


class DataDigests:
    """The digest of the fetched arrays, computed again only when the file changes."""

    def __init__(self) -> None:
        self._known: dict[tuple[Path, int, int], str] = {}

    def of(self, path: Path) -> str:
        stat = path.stat() if path.is_file() else None
        key = (path.resolve(), stat.st_mtime_ns, stat.st_size) if stat else None
        if key is not None and key in self._known:
            return self._known[key]
        arrays = read_npz(path, DIGESTED_KEYS)
        digest = array_digest(*(arrays[name] for name in DIGESTED_KEYS))
        if key is not None:
            self._known[key] = digest
        return digest


def current_lineage(root: Path, params: Params, digests: DataDigests) -> Lineage:
    """The commit checked out at `root` and the data its fetch stage wrote."""
    provenance = read_record(root / params.paths.provenance, Provenance)
    return Lineage(
        git_commit=git_commit(root),
        data_digest=digests.of(root / params.paths.raw_dataset),
        source_sha256=provenance.sha256,
    )


def git_commit(root: Path) -> str:
    """HEAD at `root`; refuses a tree whose pipeline/ differs from it, which is other code."""
    head = _git(root, "rev-parse", "HEAD")
    changed = _git(root, "status", "--porcelain", "--", CODE_FOLDER)
    if changed:
        files = [line.split(maxsplit=1)[-1] for line in changed.splitlines()]  # "XY path"
        raise PipelineError(
            f"{CODE_FOLDER}/ has uncommitted changes ({', '.join(files[:3])}"
            f"{', ...' if len(files) > 3 else ''}): a grid's cells run on committed code only; "
            "commit or stash them"
        )
    return head


def _git(root: Path, *args: str) -> str:
    try:
        result = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        )
    except FileNotFoundError as error:
        raise PipelineError("git is not installed: a grid records the commit it runs") from error
    except subprocess.CalledProcessError as error:
        raise PipelineError(
            f"{root} is not a git checkout of the project ({error.stderr.strip()}): a grid "
            "runs from a clone, at the commit it was declared on"
        ) from error
    return result.stdout.strip()


def check_lineage(declared: Lineage, current: Lineage, grid: str) -> None:
    """Refuse, saying which differs and the way out, unless `current` is what was declared."""
    if current.git_commit != declared.git_commit:
        raise PipelineError(
            f"grid {grid} was declared on commit {declared.git_commit[:12]}; this checkout is "
            f"at {current.git_commit[:12]}: `git checkout {declared.git_commit[:12]}` to work "
            "on it, or declare a new grid on this commit"
        )
    if current.data_digest != declared.data_digest:
        raise PipelineError(
            f"grid {grid} was declared on data {declared.data_digest[:12]} (source sha256 "
            f"{declared.source_sha256[:12]}); this checkout's fetched data is "
            f"{current.data_digest[:12]} (source sha256 {current.source_sha256[:12]}): "
            "`dvc pull fetch` or `dvc repro fetch` with the grid's data.source"
        )
