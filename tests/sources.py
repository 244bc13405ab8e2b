"""Tiny synthetic CIFAR-10 sources in every supported format, for tests.

Images come from `make_images`: each class has its own base colour plus seeded noise, so
images are distinct and a model can still tell classes apart. `dataset_arrays` returns
exactly the arrays the writers store (train with seed 0, test with seed 1), so a test can
check any pixel of a decoded source against them.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
BINARY_FOLDER = "cifar-10-batches-bin"
BINARY_ARCHIVE = "cifar-10-binary.tar.gz"
CLASS_FOLDER_TOP = "cifar10-small"
TRAIN_SEED = 0
TEST_SEED = 1


def make_images(per_class: int, classes: Sequence[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded uint8 N×32×32×3 images, labels interleaved by class (0, 1, …, 0, 1, …)."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(len(classes), dtype=np.uint8), per_class)
    palette = np.random.default_rng(1234).integers(48, 208, size=(len(classes), 3))
    noise = rng.integers(-40, 41, size=(labels.size, 32, 32, 3))
    images = np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels


def dataset_arrays(
    per_class_train: int, per_class_test: int, classes: Sequence[str] = CIFAR10_CLASSES
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The (x_train, y_train, x_test, y_test) that the writers below store."""
    x_train, y_train = make_images(per_class_train, classes, TRAIN_SEED)
    x_test, y_test = make_images(per_class_test, classes, TEST_SEED)
    return x_train, y_train, x_test, y_test


def binary_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Encode images as the binary release does: label byte, then R, G, B planes."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([labels.reshape(-1, 1).astype(np.uint8), planes], axis=1).tobytes()


def write_binary_release(
    root: Path, per_class_train: int = 2, per_class_test: int = 1, archive: bool = True
) -> Path:
    """Write `dataset_arrays` as cifar-10-binary.tar.gz, or cifar-10-batches-bin/ if not archive."""
    x_train, y_train, x_test, y_test = dataset_arrays(per_class_train, per_class_test)
    # Train images keep their order, split over data_batch_1..5 as evenly as possible.
    files = {f"{BINARY_FOLDER}/batches.meta.txt": ("\n".join(CIFAR10_CLASSES) + "\n\n").encode()}
    for number, part in enumerate(np.array_split(np.arange(len(y_train)), 5), start=1):
        files[f"{BINARY_FOLDER}/data_batch_{number}.bin"] = binary_records(
            x_train[part], y_train[part]
        )
    files[f"{BINARY_FOLDER}/test_batch.bin"] = binary_records(x_test, y_test)
    files[f"{BINARY_FOLDER}/readme.html"] = b"<html>synthetic CIFAR-10</html>\n"
    if archive:
        return write_tar(Path(root) / BINARY_ARCHIVE, files)
    write_files(Path(root), files)
    return Path(root) / BINARY_FOLDER


def class_folder_files(
    per_class_train: int = 2,
    per_class_test: int = 1,
    image_format: str = "PNG",
    classes: Sequence[str] = CIFAR10_CLASSES,
    top: str | None = CLASS_FOLDER_TOP,
) -> dict[str, bytes]:
    """Files `[top/]<split>/<class>/<index>.<ext>`; index = position in `dataset_arrays`."""
    # So a reader's order (by class, then file name) is the stable sort by label.
    x_train, y_train, x_test, y_test = dataset_arrays(per_class_train, per_class_test, classes)
    prefix = f"{top}/" if top else ""
    suffix = {"JPEG": "jpg"}.get(image_format.upper(), image_format.lower())
    files = {}
    for split, images, labels in (("train", x_train, y_train), ("test", x_test, y_test)):
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            name = f"{prefix}{split}/{classes[label]}/{index:05d}.{suffix}"
            files[name] = encode_image(image, image_format)
    return files


def write_class_folder(
    root: Path,
    fmt: Literal["folder", "tar", "tar.gz", "zip"],
    per_class_train: int = 2,
    per_class_test: int = 1,
    image_format: str = "PNG",
    classes: Sequence[str] = CIFAR10_CLASSES,
    top: str | None = CLASS_FOLDER_TOP,
) -> Path:
    """Write a class-folder dataset; returns the archive, or the folder holding train/, test/."""
    files = class_folder_files(per_class_train, per_class_test, image_format, classes, top)
    return write_container(Path(root), fmt, files, top)


def write_container(
    root: Path,
    fmt: Literal["folder", "tar", "tar.gz", "zip"],
    files: dict[str, bytes],
    top: str | None,
) -> Path:
    """Store `files` as a folder under `root` or as `root/<top or 'dataset'>.<fmt>`."""
    stem = top or "dataset"
    if fmt == "folder":
        write_files(root / stem if top is None else root, files)
        return root / stem
    if fmt == "zip":
        return write_zip(root / f"{stem}.zip", files)
    return write_tar(root / f"{stem}.{fmt}", files)


def encode_image(image: np.ndarray, image_format: str = "PNG") -> bytes:
    """Encode one HWC RGB uint8 image (JPEG at high quality, without chroma subsampling)."""
    buffer = io.BytesIO()
    options = {"quality": 95, "subsampling": 0} if image_format.upper() == "JPEG" else {}
    Image.fromarray(image, "RGB").save(buffer, format=image_format, **options)
    return buffer.getvalue()


def write_files(root: Path, files: dict[str, bytes]) -> None:
    """Write `files` (relative posix name → bytes) under `root`."""
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    """Write a tar archive, compressed as its suffix says (.tar, .tar.gz, .tgz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    compressed = path.name.endswith((".gz", ".tgz"))
    with tarfile.open(path, "w:gz") if compressed else tarfile.open(path, "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    """Write a deflated zip archive."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path
