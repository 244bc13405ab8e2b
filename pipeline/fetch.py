"""The `fetch` stage: CIFAR-10 from the official release or a local source → uint8 arrays."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import logging
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.cifar10.archives import container_kind
from pipeline.cifar10.chance import NUM_CLASSES
from pipeline.cifar10.decode import CIFAR10_CLASSES, DecodedDataset, read_source
from pipeline.cifar10.sampling import stratified_sample
from pipeline.common import cli
from pipeline.common.errors import PipelineError
from pipeline.common.files import atomic_path, write_npz_and_json
from pipeline.config.layout import Stores, project_root
from pipeline.config.params import DataParams, Params
from pipeline.records.data import Provenance

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60
CHUNK_BYTES = 1 << 20
OFFLINE_HINT = (
    "Without network access, point data.source at a local copy, e.g. "
    "`dvc exp run -S data.source=/path/to/cifar-10-binary.tar.gz` "
    "(a class-folder archive of JPEG/PNG files works too)"
)


def fetch_dataset(
    data: DataParams, seed: int, cache_dir: Path
) -> tuple[DecodedDataset, Provenance]:
    """Resolve, read and optionally subset the source; return it with its provenance."""
    location, url, md5 = resolve_source(data, Path(cache_dir))
    started = time.perf_counter()
    full = read_source(location)
    log.info(
        "decoded %d train and %d test images of %d classes from %s in %.1f s",
        len(full.y_train),
        len(full.y_test),
        len(full.class_names),
        location,
        time.perf_counter() - started,
    )
    check_class_count(full.class_names, location)
    dataset = subset_dataset(full, data.subset, seed) if data.subset else full
    provenance = Provenance(
        source=data.source,
        location=str(location.resolve()),
        url=url,
        md5_verified=md5,
        format=dataset.source_format,
        container=container_kind(location),
        sha256=sha256_of(location),
        sha256_of="file" if location.is_file() else "folder: sorted relative paths + bytes",
        class_names=list(dataset.class_names),
        counts={
            "train": class_counts(dataset.y_train, dataset.class_names),
            "test": class_counts(dataset.y_test, dataset.class_names),
        },
        total={"train": len(dataset.y_train), "test": len(dataset.y_test)},
        source_total={"train": len(full.y_train), "test": len(full.y_test)},
        subset=data.subset,
    )
    return dataset, provenance


def check_class_count(class_names: tuple[str, ...], location: Path) -> None:
    """The model has one output per CIFAR-10 class: refuse a dataset with other classes here,
    in one line naming them, rather than let training fail on a label out of range."""
    if len(class_names) == NUM_CLASSES:
        return
    unexpected = [name for name in class_names if name not in CIFAR10_CLASSES]
    missing = [name for name in CIFAR10_CLASSES if name not in class_names]
    detail = "; ".join(
        part
        for part in (
            f"unexpected: {', '.join(unexpected)}" if unexpected else "",
            f"missing: {', '.join(missing)}" if missing else "",
        )
        if part
    )
    raise PipelineError(
        f"{location} has {len(class_names)} classes ({detail}), but the model has "
        f"{NUM_CLASSES} outputs, one per CIFAR-10 class: remove the other class folders from "
        "train/ and test/, or point data.source at a CIFAR-10 copy"
    )


def resolve_source(data: DataParams, cache_dir: Path) -> tuple[Path, str | None, str | None]:
    """The local path to read, the URL it came from, and the md5 it was verified against."""
    if data.source == "official":
        return cached_download(data.url, cache_dir, data.md5), data.url, data.md5
    if re.match(r"^https?://", data.source, flags=re.IGNORECASE):
        md5 = data.md5 if data.source == data.url else None
        return cached_download(data.source, cache_dir, md5), data.source, md5
    # Relative to the project root, so queued experiments (run in a copy) find it too.
    path = project_root() / Path(data.source).expanduser()
    if not path.exists():
        raise PipelineError(
            f"data.source {data.source!r} does not exist (looked for {path}): fix the "
            "path (relative paths start at the project root) or use 'official'"
        )
    return path, None, None


def cached_download(url: str, cache_dir: Path, md5: str | None) -> Path:
    """Download `url` into `cache_dir`; a cached copy is reused only if it matches `md5`."""
    target = cache_dir / _cache_name(url)
    if md5 is not None and target.is_file():
        if file_digest(target, "md5") == md5:
            log.info("using cached %s (md5 verified)", target)
            return target
        log.warning("cached %s does not match data.md5; deleting it and downloading again", target)
        target.unlink()
    download(url, target, md5)
    return target


def _cache_name(url: str) -> str:
    """A safe file name for `url`'s download, keeping its suffix (which tells its format)."""
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name or "download"


def download(url: str, target: Path, md5: str | None = None) -> None:
    """Fetch `url` to `target` through a temporary file, checking `md5` when given."""
    log.info("downloading %s to %s", url, target)
    digest = hashlib.md5(usedforsecurity=False)  # a checksum, not a security control
    with atomic_path(target) as temporary:
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                received = _copy_with_progress(response, temporary, digest, total, target.name)
        except urllib.error.HTTPError as error:
            raise _download_error(url, f"HTTP {error.code} {error.reason}") from error
        except urllib.error.URLError as error:
            raise _download_error(url, str(error.reason)) from error
        except (http.client.HTTPException, OSError, ValueError) as error:
            raise _download_error(url, str(error) or type(error).__name__) from error
        if total is not None and received != total:
            raise _download_error(
                url, f"the connection ended after {received:,} of {total:,} bytes"
            )
        if md5 is not None and digest.hexdigest() != md5:
            raise PipelineError(
                f"the download of {url} has md5 {digest.hexdigest()}, not data.md5 = {md5}; "
                "the bad file was deleted. Run the stage again to retry; if the file changed "
                "upstream on purpose, set data.md5 to its new checksum"
            )
    log.info("downloaded %s (%d bytes)", target, received)


def _download_error(url: str, reason: str) -> PipelineError:
    """The one-line error for a failed download, with the offline way out."""
    return PipelineError(f"cannot download {url}: {reason}. {OFFLINE_HINT}")


def _copy_with_progress(
    response: Any, destination: Path, digest: Any, total: int | None, label: str
) -> int:
    """Copy the response body to `destination`, updating `digest` and a progress bar."""
    received = 0
    with (
        destination.open("wb") as stream,
        tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=label,
            file=sys.stderr,
            disable=None,  # no bar when stderr is not a terminal (CI logs)
        ) as bar,
    ):
        while chunk := response.read(CHUNK_BYTES):
            stream.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    return received


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file's bytes."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a folder: each file's relative path, size and bytes, sorted."""
    if path.is_file():
        return file_digest(path, "sha256")
    digest = hashlib.sha256()
    files = sorted(
        (file.relative_to(path).as_posix(), file) for file in path.rglob("*") if file.is_file()
    )
    for name, file in files:
        data = file.read_bytes()
        # Name and length delimit each entry, so different trees cannot hash alike.
        digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def class_counts(labels: np.ndarray, class_names: tuple[str, ...]) -> dict[str, int]:
    """Images per class name."""
    counts = np.bincount(labels, minlength=len(class_names))
    return {name: int(count) for name, count in zip(class_names, counts, strict=True)}


def subset_dataset(dataset: DecodedDataset, limit: int, seed: int) -> DecodedDataset:
    """At most `limit` images per split, stratified by class, in their original order."""
    rng = np.random.default_rng(seed)
    train = stratified_sample(dataset.y_train, limit, rng)
    test = stratified_sample(dataset.y_test, limit, rng)
    return dataclasses.replace(
        dataset,
        x_train=dataset.x_train[train],
        y_train=dataset.y_train[train],
        x_test=dataset.x_test[test],
        y_test=dataset.y_test[test],
    )


def run(params: Params, stores: Stores) -> Provenance:
    """Fetch, decode and write the raw dataset and its provenance."""
    started = time.perf_counter()
    dataset, provenance = fetch_dataset(
        params.data, params.seed, stores.root / params.paths.download_cache
    )
    # Both outputs are written only now, so a failed fetch leaves earlier ones untouched.
    arrays = {
        "x_train": dataset.x_train,
        "y_train": dataset.y_train,
        "x_test": dataset.x_test,
        "y_test": dataset.y_test,
        "class_names": np.array(dataset.class_names, dtype=str),
    }
    write_npz_and_json(
        params.paths.raw_dataset,
        arrays,
        params.paths.provenance,
        provenance.model_dump(mode="json", exclude_none=True),
    )
    log.info(
        "wrote %s (%d train, %d test images) and %s in %.1f s",
        params.paths.raw_dataset,
        len(dataset.y_train),
        len(dataset.y_test),
        params.paths.provenance,
        time.perf_counter() - started,
    )
    return provenance


def main(argv: list[str] | None = None) -> None:
    """Command line: `python -m pipeline.fetch [--params params.yaml] [--debug]`."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.fetch", description=__doc__)
    cli.add_common_arguments(parser)
    cli.run_stage(parser.parse_args(argv), lambda params: run(params, Stores.from_environment()))


if __name__ == "__main__":
    main()
