"""Source readers: the binary release and class folders, in every container, and bad input."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.cifar10.archives import container_kind
from pipeline.cifar10.decode import read_source
from pipeline.common.errors import PipelineError
from tests.sources import (
    CIFAR10_CLASSES,
    class_folder_files,
    dataset_arrays,
    encode_image,
    write_binary_release,
    write_class_folder,
    write_files,
    write_tar,
    write_zip,
)

RECORD = 3073


def read_error(path: Path) -> str:
    """The one-line PipelineError message that reading `path` raises."""
    with pytest.raises(PipelineError) as caught:
        read_source(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def by_label(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels stably sorted by label, as class-folder readers return them."""
    order = np.argsort(labels, kind="stable")
    return images[order], labels[order]


# --- binary release ---------------------------------------------------------------------


def test_binary_record_is_label_then_r_g_b_planes(tmp_path: Path) -> None:
    folder = write_binary_release(tmp_path, archive=False)
    record = bytearray(RECORD)
    record[0] = 7
    record[1 + 0 * 1024 + 0 * 32 + 1] = 201  # R plane, row 0, column 1
    record[1 + 1 * 1024 + 2 * 32 + 3] = 202  # G plane, row 2, column 3
    record[1 + 2 * 1024 + 31 * 32 + 30] = 203  # B plane, row 31, column 30
    (folder / "test_batch.bin").write_bytes(bytes(record))
    dataset = read_source(folder)
    assert dataset.x_test.shape == (1, 32, 32, 3) and dataset.x_test.dtype == np.uint8
    assert dataset.y_test.tolist() == [7]
    image = dataset.x_test[0]
    assert image[0, 1, 0] == 201
    assert image[2, 3, 1] == 202
    assert image[31, 30, 2] == 203
    assert int(image.sum()) == 201 + 202 + 203


@pytest.mark.parametrize("where", ["archive", "folder", "parent"])
def test_binary_release_decodes_exactly(tmp_path: Path, where: str) -> None:
    path = write_binary_release(tmp_path / "src", 3, 2, archive=where == "archive")
    if where == "parent":
        path = path.parent
    dataset = read_source(path)
    x_train, y_train, x_test, y_test = dataset_arrays(3, 2)
    assert np.array_equal(dataset.x_train, x_train)
    assert np.array_equal(dataset.y_train, y_train)
    assert np.array_equal(dataset.x_test, x_test)
    assert np.array_equal(dataset.y_test, y_test)
    assert dataset.class_names == CIFAR10_CLASSES
    assert dataset.source_format == "cifar10-binary"
    assert dataset.y_train.dtype == np.uint8 and dataset.x_train.flags.c_contiguous


def test_binary_class_names_follow_meta_file_skipping_blank_lines(tmp_path: Path) -> None:
    folder = write_binary_release(tmp_path, archive=False)
    names = [f"kind{index}" for index in range(10)][::-1]
    (folder / "batches.meta.txt").write_text("\n\n".join(names) + "\n  \n\n")
    assert read_source(folder).class_names == tuple(names)


def test_binary_batch_of_wrong_size_is_reported(tmp_path: Path) -> None:
    folder = write_binary_release(tmp_path, archive=False)
    batch = folder / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-10])
    message = read_error(folder)
    assert "data_batch_3.bin" in message and "3,073" in message and "truncated" in message


def test_binary_label_out_of_range_is_reported(tmp_path: Path) -> None:
    folder = write_binary_release(tmp_path, archive=False)
    (folder / "test_batch.bin").write_bytes(bytes([10]) + bytes(RECORD - 1))
    message = read_error(folder)
    assert "label 10" in message and "test_batch.bin" in message


def test_binary_missing_batch_is_named(tmp_path: Path) -> None:
    folder = write_binary_release(tmp_path, archive=False)
    (folder / "data_batch_5.bin").unlink()
    assert "data_batch_5.bin" in read_error(folder)


# --- class folders ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["folder", "tar", "tar.gz", "zip"])
@pytest.mark.parametrize("top", ["cifar10-small", None])
def test_class_folder_decodes_exactly(tmp_path: Path, fmt: str, top: str | None) -> None:
    path = write_class_folder(tmp_path / "src", fmt, 3, 2, top=top)  # type: ignore[arg-type]
    dataset = read_source(path)
    x_train, y_train, x_test, y_test = dataset_arrays(3, 2)
    expected_train, expected_train_labels = by_label(x_train, y_train)
    expected_test, expected_test_labels = by_label(x_test, y_test)
    assert np.array_equal(dataset.x_train, expected_train)
    assert np.array_equal(dataset.y_train, expected_train_labels)
    assert np.array_equal(dataset.x_test, expected_test)
    assert np.array_equal(dataset.y_test, expected_test_labels)
    assert dataset.class_names == CIFAR10_CLASSES
    assert dataset.source_format == "class-folder"
    assert container_kind(path) == ("tar" if fmt.startswith("tar") else fmt)


def test_class_folder_accepts_the_parent_of_its_top_folder(tmp_path: Path) -> None:
    folder = write_class_folder(tmp_path / "src", "folder")
    dataset = read_source(folder.parent)
    assert len(dataset.y_train) == 20 and len(dataset.y_test) == 10


def test_jpeg_images_decode_close_to_the_originals(tmp_path: Path) -> None:
    path = write_class_folder(tmp_path, "tar.gz", image_format="JPEG")
    dataset = read_source(path)
    x_train, y_train, _, _ = dataset_arrays(2, 1)
    expected, labels = by_label(x_train, y_train)
    assert np.array_equal(dataset.y_train, labels)
    error = np.abs(dataset.x_train.astype(int) - expected.astype(int))
    assert error.mean() < 4
    # Each decoded image is nearer its own original than any other image.
    distances = np.abs(dataset.x_train[:, None].astype(int) - expected[None].astype(int))
    nearest = distances.reshape(len(expected), len(expected), -1).mean(axis=2).argmin(axis=1)
    assert nearest.tolist() == list(range(len(expected)))


def test_cifar_class_folders_use_the_official_label_order(tmp_path: Path) -> None:
    reverse = tuple(reversed(CIFAR10_CLASSES))
    path = write_class_folder(tmp_path, "zip", classes=reverse)
    dataset = read_source(path)
    assert dataset.class_names == CIFAR10_CLASSES
    x_train, y_train, _, _ = dataset_arrays(2, 1, reverse)
    for label, name in enumerate(CIFAR10_CLASSES):
        mine = dataset.x_train[dataset.y_train == label]
        assert np.array_equal(mine, x_train[y_train == reverse.index(name)])


@pytest.mark.parametrize(
    "classes",
    [("zebra", "apple", "mango"), CIFAR10_CLASSES[:9]],
    ids=["other-names", "nine-cifar-names"],
)
def test_other_class_sets_are_sorted_alphabetically(
    tmp_path: Path, classes: tuple[str, ...]
) -> None:
    path = write_class_folder(tmp_path, "tar", classes=classes)
    dataset = read_source(path)
    assert dataset.class_names == tuple(sorted(classes))
    assert np.bincount(dataset.y_train).tolist() == [2] * len(classes)


def test_stray_files_are_ignored(tmp_path: Path) -> None:
    files = class_folder_files()
    files["cifar10-small/README.md"] = b"notes"
    files["cifar10-small/train/cat/.DS_Store"] = b"\0\0"
    files["__MACOSX/cifar10-small/train/cat/._00003.png"] = b"\0\0"
    dataset = read_source(write_tar(tmp_path / "d.tar", files))
    assert len(dataset.y_train) == 20


# --- bad input --------------------------------------------------------------------------


def test_wrong_image_size_names_the_file_and_its_size(tmp_path: Path) -> None:
    files = class_folder_files()
    files["cifar10-small/train/dog/00005.png"] = encode_image(np.zeros((32, 33, 3), np.uint8))
    message = read_error(write_zip(tmp_path / "d.zip", files))
    assert "train/dog/00005.png" in message and "33×32" in message and "32×32" in message


def test_undecodable_image_names_the_file(tmp_path: Path) -> None:
    files = class_folder_files()
    files["cifar10-small/test/cat/00003.png"] = b"this is not an image"
    message = read_error(write_tar(tmp_path / "d.tar.gz", files))
    assert "cannot decode" in message and "test/cat/00003.png" in message


def test_class_missing_from_test_split_is_named(tmp_path: Path) -> None:
    files = {k: v for k, v in class_folder_files().items() if "/test/truck/" not in k}
    write_files(tmp_path / "src", files)
    message = read_error(tmp_path / "src")
    assert "'truck'" in message and "test/" in message


@pytest.mark.parametrize("split", ["train", "test"])
def test_missing_split_is_named(tmp_path: Path, split: str) -> None:
    files = {k: v for k, v in class_folder_files().items() if f"/{split}/" not in k}
    message = read_error(write_tar(tmp_path / "d.tar", files))
    assert f"no {split}/ images" in message


def test_source_without_images_is_explained(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "README.md").write_text("nothing here")
    message = read_error(tmp_path / "src")
    assert "no CIFAR-10 images" in message and "train/<class>" in message


def test_two_datasets_in_one_archive_are_refused(tmp_path: Path) -> None:
    files = class_folder_files(top="a") | class_folder_files(top="b")
    assert "several datasets" in read_error(write_tar(tmp_path / "d.tar", files))


def test_missing_source_is_reported(tmp_path: Path) -> None:
    assert "does not exist" in read_error(tmp_path / "nope.tar.gz")


def test_unknown_format_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"hello" * 200)
    assert "unknown format" in read_error(path)


@pytest.mark.parametrize("cut", ["half", "trailer"])
def test_truncated_tar_gz_is_reported(tmp_path: Path, cut: str) -> None:
    path = write_binary_release(tmp_path)
    data = path.read_bytes()
    # Losing only the gzip trailer still parses as tar: the CRC/length check catches it.
    path.write_bytes(data[: len(data) // 2] if cut == "half" else data[:-4])
    message = read_error(path)
    assert "truncated or corrupt" in message and "data.source" in message


def test_flipped_bytes_inside_tar_gz_are_reported(tmp_path: Path) -> None:
    path = write_class_folder(tmp_path, "tar.gz")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    assert "truncated or corrupt" in read_error(path)


@pytest.mark.parametrize("name", ["junk.tar.gz", "junk.tar", "junk.zip"])
def test_garbage_archive_is_reported(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    message = read_error(path)
    assert "truncated or corrupt" in message and name in message


def test_truncated_zip_is_reported(tmp_path: Path) -> None:
    path = write_class_folder(tmp_path, "zip")
    path.write_bytes(path.read_bytes()[:-100])
    assert "truncated or corrupt" in read_error(path)


def tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    """A valid class-folder tar.gz with one extra member."""
    with tarfile.open(path, "w:gz") as archive:
        for name, content in class_folder_files().items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        member.size = len(data) if member.isfile() else 0
        archive.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    """A tar member header."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("info", "phrase"),
    [
        (member("../escaped.txt"), "'..'"),
        (member("cifar10-small/../../escaped.txt"), "'..'"),
        (member("/escaped.txt"), "absolute path"),
        (member("cifar10-small/up", tarfile.SYMTYPE, "../../escaped.txt"), "link"),
        (member("cifar10-small/ok", tarfile.SYMTYPE, "train/cat/00003.png"), "link"),
        (member("cifar10-small/hard", tarfile.LNKTYPE, "cifar10-small/README"), "link"),
        (member("cifar10-small/dev", tarfile.CHRTYPE), "special file"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-in", "hardlink", "device"],
)
def test_unsafe_tar_members_are_refused(tmp_path: Path, info: tarfile.TarInfo, phrase: str) -> None:
    path = tar_with(tmp_path / "d.tar.gz", info, b"escaped")
    message = read_error(path)
    assert info.name in message and phrase in message and "unsafe member" in message
    assert [entry.name for entry in tmp_path.iterdir()] == ["d.tar.gz"]  # nothing extracted


@pytest.mark.parametrize(
    ("name", "mode", "phrase"),
    [
        ("../escaped.txt", stat.S_IFREG | 0o644, "'..'"),
        ("..\\escaped.txt", stat.S_IFREG | 0o644, "'..'"),
        ("/escaped.txt", stat.S_IFREG | 0o644, "absolute path"),
        ("cifar10-small/up", stat.S_IFLNK | 0o777, "link"),
    ],
    ids=["dotdot", "backslash-dotdot", "absolute", "symlink"],
)
def test_unsafe_zip_members_are_refused(tmp_path: Path, name: str, mode: int, phrase: str) -> None:
    path = write_zip(tmp_path / "d.zip", class_folder_files())
    with zipfile.ZipFile(path, "a") as archive:
        info = zipfile.ZipInfo("placeholder")
        info.filename = name  # set directly: ZipInfo() would strip a leading '/'
        info.external_attr = mode << 16
        archive.writestr(info, b"../../escaped.txt")
    message = read_error(path)
    assert phrase in message and "unsafe member" in message
