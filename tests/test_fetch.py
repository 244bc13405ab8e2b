"""The fetch stage: source resolution, downloads, checksums, subsets and the command line."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.cifar10.decode import DecodedDataset
from pipeline.common.errors import PipelineError
from pipeline.config.params import DataParams
from pipeline.fetch import fetch_dataset, subset_dataset
from pipeline.records.data import Provenance
from tests.conftest import Server
from tests.sources import CIFAR10_CLASSES, write_binary_release, write_class_folder

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def md5(path: Path) -> str:
    """md5 of a file."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def fetch(data: DataParams, tmp_path: Path, seed: int = 0) -> tuple[DecodedDataset, Provenance]:
    """fetch_dataset with the download cache inside tmp_path."""
    return fetch_dataset(data, seed, tmp_path / "cache")


# --- local sources and provenance -------------------------------------------------------


def test_local_archive_provenance_records_its_checksum_and_counts(tmp_path: Path) -> None:
    path = write_binary_release(tmp_path / "src", 3, 2)
    dataset, provenance = fetch(DataParams(source=str(path)), tmp_path)
    assert provenance.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert provenance.source == str(path)
    assert provenance.location == str(path.resolve())
    assert provenance.format == "cifar10-binary" and provenance.container == "tar"
    assert provenance.url is None and provenance.md5_verified is None
    assert provenance.counts["train"] == dict.fromkeys(CIFAR10_CLASSES, 3)
    assert provenance.counts["test"] == dict.fromkeys(CIFAR10_CLASSES, 2)
    assert provenance.total == {"train": 30, "test": 20}
    assert provenance.class_names == list(CIFAR10_CLASSES)
    assert provenance.subset is None
    assert dataset.x_train.shape == (30, 32, 32, 3)


def test_folder_checksum_covers_names_and_bytes(tmp_path: Path) -> None:
    folder = write_class_folder(tmp_path / "src", "folder")
    data = DataParams(source=str(folder))
    first = fetch(data, tmp_path)[1].sha256
    assert fetch(data, tmp_path)[1].sha256 == first
    image = folder / "train" / "cat" / "00003.png"
    original = image.read_bytes()
    image.write_bytes(original + b"\0")
    assert fetch(data, tmp_path)[1].sha256 != first
    image.write_bytes(original)
    image.rename(image.with_name("00003b.png"))
    provenance = fetch(data, tmp_path)[1]
    assert provenance.sha256 != first
    assert provenance.container == "folder" and provenance.format == "class-folder"


def test_relative_and_home_paths_are_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_class_folder(tmp_path / "data", "zip")
    monkeypatch.chdir(tmp_path)
    provenance = fetch(DataParams(source="data/cifar10-small.zip"), tmp_path)[1]
    assert provenance.location == str(path.resolve())
    monkeypatch.setenv("HOME", str(tmp_path / "data"))
    provenance = fetch(DataParams(source="~/cifar10-small.zip"), tmp_path)[1]
    assert provenance.location == str(path.resolve())


def test_missing_local_source_says_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"data\.source .*does not exist"):
        fetch(DataParams(source=str(tmp_path / "nowhere.tar.gz")), tmp_path)


# --- subsets ----------------------------------------------------------------------------


def test_subset_is_stratified_seeded_and_keeps_order(tmp_path: Path) -> None:
    path = write_binary_release(tmp_path / "src", 6, 4)
    full, _ = fetch(DataParams(source=str(path)), tmp_path)
    data = DataParams(source=str(path), subset=20)
    dataset, provenance = fetch(data, tmp_path, seed=3)
    assert provenance.counts["train"] == dict.fromkeys(CIFAR10_CLASSES, 2)
    assert provenance.total == {"train": 20, "test": 20}
    assert provenance.source_total == {"train": 60, "test": 40}
    assert provenance.subset == 20
    # Every kept image is the original one at an increasing position.
    flat = full.x_train.reshape(len(full.x_train), -1)
    positions = [
        int(np.flatnonzero((flat == image.ravel()).all(axis=1))[0]) for image in dataset.x_train
    ]
    assert positions == sorted(positions) and len(set(positions)) == 20
    assert np.array_equal(full.y_train[positions], dataset.y_train)
    same, _ = fetch(data, tmp_path, seed=3)
    other, _ = fetch(data, tmp_path, seed=4)
    assert np.array_equal(same.x_train, dataset.x_train)
    assert not np.array_equal(other.x_train, dataset.x_train)


def test_subset_larger_than_the_data_keeps_everything(tmp_path: Path) -> None:
    path = write_class_folder(tmp_path / "src", "tar")
    full, _ = fetch(DataParams(source=str(path)), tmp_path)
    dataset = subset_dataset(full, 1000, seed=0)
    assert np.array_equal(dataset.x_train, full.x_train)
    assert np.array_equal(dataset.y_test, full.y_test)


# --- downloads --------------------------------------------------------------------------


def official(server: Server, tmp_path: Path, md5sum: str | None = None) -> DataParams:
    """Params for 'official' pointed at a binary release served by `server`."""
    archive = write_binary_release(server.root)
    return DataParams(url=f"{server.url}/{archive.name}", md5=md5sum or md5(archive))


def test_official_download_is_verified_and_cached(server: Server, tmp_path: Path) -> None:
    data = official(server, tmp_path)
    dataset, provenance = fetch(data, tmp_path)
    cached = tmp_path / "cache" / "cifar-10-binary.tar.gz"
    assert cached.read_bytes() == (server.root / "cifar-10-binary.tar.gz").read_bytes()
    assert provenance.url == data.url and provenance.md5_verified == data.md5
    assert provenance.location == str(cached.resolve())
    assert provenance.sha256 == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert len(dataset.y_train) == 20
    assert len(server.requests) == 1
    fetch(data, tmp_path)
    assert len(server.requests) == 1, "a verified cached copy must not be downloaded again"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cached.name]


def test_stale_cached_copy_is_replaced(server: Server, tmp_path: Path) -> None:
    data = official(server, tmp_path)
    cached = tmp_path / "cache" / "cifar-10-binary.tar.gz"
    cached.parent.mkdir()
    cached.write_bytes(b"an older, broken download")
    fetch(data, tmp_path)
    assert len(server.requests) == 1
    assert md5(cached) == data.md5


def test_md5_mismatch_deletes_the_download(server: Server, tmp_path: Path) -> None:
    data = official(server, tmp_path, md5sum="0" * 32)
    with pytest.raises(PipelineError) as caught:
        fetch(data, tmp_path)
    message = str(caught.value)
    assert "md5" in message and "deleted" in message and "data.md5" in message
    assert list((tmp_path / "cache").iterdir()) == []


def test_other_urls_are_downloaded_without_md5(server: Server, tmp_path: Path) -> None:
    archive = write_class_folder(server.root, "zip")
    data = DataParams(source=f"{server.url}/{archive.name}", md5="0" * 32)
    dataset, provenance = fetch(data, tmp_path)
    assert provenance.md5_verified is None and provenance.format == "class-folder"
    assert (tmp_path / "cache" / archive.name).read_bytes() == archive.read_bytes()
    fetch(data, tmp_path)
    assert len(server.requests) == 2, "an unverifiable copy is downloaded afresh"


def test_http_error_points_at_data_source(server: Server, tmp_path: Path) -> None:
    data = DataParams(source=f"{server.url}/missing.tar.gz")
    with pytest.raises(PipelineError) as caught:
        fetch(data, tmp_path)
    message = str(caught.value)
    assert "cannot download" in message and "404" in message and "data.source" in message
    assert "\n" not in message
    assert not (tmp_path / "cache" / "missing.tar.gz").exists()


def test_unreachable_server_points_at_data_source(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The socket is closed: nothing listens on that port any more.
    data = DataParams(url=f"http://127.0.0.1:{port}/cifar-10-binary.tar.gz")
    with pytest.raises(PipelineError) as caught:
        fetch(data, tmp_path)
    message = str(caught.value)
    assert f"cannot download {data.url}" in message and "data.source=" in message


# --- command line -----------------------------------------------------------------------


def run_cli(folder: Path) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline.fetch --params params.yaml` in `folder`."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.fetch", "--params", "params.yaml"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_params(folder: Path, source: str) -> None:
    """A params.yaml whose paths all point inside `folder`."""
    params = {
        "seed": 1,
        "paths": {
            "download_cache": "cache",
            "raw_dataset": "out/raw.npz",
            "provenance": "out/provenance.json",
        },
        "data": {"source": source, "subset": 15},
        "variants": {"plain": {"batch_norm": False}},
    }
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


def test_cli_writes_outputs_and_a_failure_leaves_them_untouched(tmp_path: Path) -> None:
    write_class_folder(tmp_path, "tar.gz")
    write_params(tmp_path, "cifar10-small.tar.gz")
    done = run_cli(tmp_path)
    assert done.returncode == 0, done.stderr
    raw, provenance = tmp_path / "out" / "raw.npz", tmp_path / "out" / "provenance.json"
    with np.load(raw, allow_pickle=False) as arrays:
        assert arrays["class_names"].dtype.kind == "U"
        assert arrays["class_names"].tolist() == list(CIFAR10_CLASSES)
        assert arrays["x_train"].shape == (15, 32, 32, 3) and arrays["x_train"].dtype == np.uint8
        assert sorted(arrays["y_test"].tolist()) == list(range(10))
    before = raw.read_bytes(), provenance.read_bytes()

    (tmp_path / "corrupt.tar.gz").write_bytes(b"\x1f\x8b\x08" + bytes(range(256)) * 4)
    write_params(tmp_path, "corrupt.tar.gz")
    failed = run_cli(tmp_path)
    assert failed.returncode != 0
    assert "Traceback" not in failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "corrupt.tar.gz" in errors[0], failed.stderr
    assert (raw.read_bytes(), provenance.read_bytes()) == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["provenance.json", "raw.npz"]
