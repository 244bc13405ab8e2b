"""CIFAR-10 decoded from its supported source formats: the binary release and class folders."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.cifar10.archives import archive_errors, container_kind, members
from pipeline.common.errors import PipelineError

log = logging.getLogger(__name__)

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
SIDE = 32
PIXELS = SIDE * SIDE
RECORD_BYTES = 1 + 3 * PIXELS
SPLITS = ("train", "test")
BINARY_META = "batches.meta.txt"
BINARY_TRAIN = tuple(f"data_batch_{number}.bin" for number in range(1, 6))
BINARY_TEST = "test_batch.bin"
BINARY_FILES = frozenset((BINARY_META, *BINARY_TRAIN, BINARY_TEST))
# The python release's pickled batches: recognized only to refuse them with a useful message.
PICKLED_BATCHES = frozenset(("batches.meta", "data_batch_1", "test_batch"))
LAYOUT = (
    "the CIFAR-10 binary release (cifar-10-binary.tar.gz or its cifar-10-batches-bin/ folder) "
    "or class folders train/<class>/* and test/<class>/* (tar, tar.gz, zip or folder)"
)


@dataclass(frozen=True)
class DecodedDataset:
    """CIFAR-shaped arrays: uint8 N×32×32×3 RGB images, uint8 labels indexing class_names."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source_format: str = "unknown"


def read_source(path: Path) -> DecodedDataset:
    """Decode the dataset at `path` (archive or folder).

    Members are decoded straight from the archive, never extracted; unsafe members
    (absolute, escaping, links, devices) are refused all the same.
    """
    path = Path(path)
    kind = container_kind(path)
    collector = _Collector(path)
    with archive_errors(path, kind):
        for name, read in members(path, kind):
            collector.add(name, read)
    return collector.finish()


class _Collector:
    """Sorts archive members into the binary release's files and class-folder images."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.binary: dict[str, bytes] = {}
        self.images: list[tuple[str, str, str]] = []
        self.roots: set[str] = set()
        self.ignored: list[str] = []
        # One growing buffer of RGB bytes: a tenth of the memory of 60,000 small arrays.
        self.pixels = bytearray()

    def add(self, name: str, read: Callable[[], bytes]) -> None:
        """Keep one member if it belongs to a supported layout; note it otherwise."""
        parts = name.split("/")
        if any(part.startswith(".") or part == "__MACOSX" for part in parts):
            return
        if parts[-1] in BINARY_FILES:
            if parts[-1] in self.binary:
                raise PipelineError(
                    f"{self.source} holds two copies of {parts[-1]}: keep one "
                    "cifar-10-batches-bin/ folder in it"
                )
            self.binary[parts[-1]] = read()
        elif len(parts) in (3, 4) and parts[-3] in SPLITS:
            self.roots.add("/".join(parts[:-3]))
            self.images.append((parts[-3], parts[-2], name))
            # Decoded as it streams past: a pool of processes did not pay off on 2 cores.
            self.pixels += _rgb_bytes(f"{name} in {self.source}", read())
        else:
            self.ignored.append(name)

    def finish(self) -> DecodedDataset:
        """The decoded dataset, after checking that it is CIFAR-shaped."""
        if self.ignored:
            log.info(
                "ignored %d files outside the expected layout, e.g. %s",
                len(self.ignored),
                self.ignored[0],
            )
        if self.binary and self.images:
            raise PipelineError(
                f"{self.source} holds both a binary release and class folders: point "
                "data.source at one of them"
            )
        if self.binary:
            return _decode_binary(self.source, self.binary)
        if self.images:
            return self._class_folder()
        if any(name.split("/")[-1] in PICKLED_BATCHES for name in self.ignored):
            raise PipelineError(
                f"{self.source} is CIFAR-10's python release, whose batches are pickles: "
                "loading a pickle can run arbitrary code, so it is refused. Use the binary "
                "release (data.source: official, or a copy of cifar-10-binary.tar.gz) or "
                "class folders train/<class>/* and test/<class>/*"
            )
        raise PipelineError(f"{self.source} holds no CIFAR-10 images: expected {LAYOUT}")

    def _class_folder(self) -> DecodedDataset:
        """Assemble decoded class-folder images into sorted, labelled splits."""
        if len(self.roots) > 1:
            found = ", ".join(f"{root}/" for root in sorted(self.roots))
            raise PipelineError(
                f"{self.source} holds several datasets ({found}): point data.source at one"
            )
        classes = {split: {c for s, c, _ in self.images if s == split} for split in SPLITS}
        for split in SPLITS:
            if not classes[split]:
                raise PipelineError(
                    f"{self.source} has no {split}/ images: a class-folder dataset needs "
                    "both train/<class>/* and test/<class>/*"
                )
        for split, other in (("train", "test"), ("test", "train")):
            missing = sorted(classes[split] - classes[other])
            if missing:
                raise PipelineError(
                    f"{self.source}: class {missing[0]!r} has images in {split}/ but none in "
                    f"{other}/; train and test must hold the same class folders"
                )
        names = class_order(classes["train"])
        if len(names) > 256:
            raise PipelineError(
                f"{self.source} has {len(names)} class folders; at most 256 are supported"
            )
        pixels = np.frombuffer(self.pixels, dtype=np.uint8).reshape(-1, SIDE, SIDE, 3)
        label_of = {name: label for label, name in enumerate(names)}
        arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for split in SPLITS:
            # Sorted by class, then file name: the result does not depend on archive order.
            order = sorted(
                (label_of[c], name, index)
                for index, (s, c, name) in enumerate(self.images)
                if s == split
            )
            indices = np.array([index for _, _, index in order], dtype=np.int64)
            labels = np.array([label for label, _, _ in order], dtype=np.uint8)
            arrays[split] = (pixels[indices], labels)
        return DecodedDataset(
            x_train=arrays["train"][0],
            y_train=arrays["train"][1],
            x_test=arrays["test"][0],
            y_test=arrays["test"][1],
            class_names=names,
            source_format="class-folder",
        )


def class_order(names: set[str] | frozenset[str]) -> tuple[str, ...]:
    """CIFAR-10's official label order for its ten names, else alphabetical."""
    if set(names) == set(CIFAR10_CLASSES):
        return CIFAR10_CLASSES
    return tuple(sorted(names))


def _decode_binary(source: Path, files: dict[str, bytes]) -> DecodedDataset:
    """Decode the binary release's batches and class names."""
    missing = sorted(BINARY_FILES - files.keys())
    if missing:
        raise PipelineError(
            f"{source} lacks {', '.join(missing)} of the CIFAR-10 binary release: "
            "download the complete cifar-10-binary.tar.gz again"
        )
    text = files[BINARY_META].decode("utf-8", errors="replace")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise PipelineError(f"{BINARY_META} in {source} lists no class names: restore the file")
    batches = [_decode_batch(source, name, files[name], len(names)) for name in BINARY_TRAIN]
    x_test, y_test = _decode_batch(source, BINARY_TEST, files[BINARY_TEST], len(names))
    x_train = np.concatenate([x for x, _ in batches])
    y_train = np.concatenate([y for _, y in batches])
    for split, labels in (("train", y_train), ("test", y_test)):
        if labels.size == 0:
            raise PipelineError(f"{source} holds no {split} images: its batches are empty")
    return DecodedDataset(x_train, y_train, x_test, y_test, names, "cifar10-binary")


def _decode_batch(
    source: Path, name: str, data: bytes, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Records of 1 label byte + 1,024 R, 1,024 G, 1,024 B bytes → (N×32×32×3, N)."""
    if len(data) % RECORD_BYTES:
        raise PipelineError(
            f"{name} in {source} is {len(data):,} bytes, not a multiple of the "
            f"{RECORD_BYTES:,}-byte record: the file is truncated or corrupt; download the "
            "release again"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].copy()
    if labels.size and int(labels.max()) >= classes:
        raise PipelineError(
            f"{name} in {source} has label {int(labels.max())} but {BINARY_META} names only "
            f"{classes} classes: the file is corrupt; download the release again"
        )
    planes = records[:, 1:].reshape(-1, 3, SIDE, SIDE)
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1)), labels


def decode_image(name: str, data: bytes) -> np.ndarray:
    """Decode one image file to a uint8 32×32×3 RGB array; `name` is for error messages."""
    return np.frombuffer(_rgb_bytes(name, data), dtype=np.uint8).reshape(SIDE, SIDE, 3)


def _rgb_bytes(name: str, data: bytes) -> bytes:
    """Decode one 32×32 image file to its 3,072 RGB bytes, row by row."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.size != (SIDE, SIDE):
                width, height = image.size
                raise PipelineError(
                    f"image {name} is {width}×{height} pixels, not 32×32: resize the dataset "
                    "to 32×32 or point data.source at a CIFAR-10 copy"
                )
            image.load()
            # tobytes is ~15% faster than np.asarray(image.convert("RGB")) on tiny images.
            return (image if image.mode == "RGB" else image.convert("RGB")).tobytes()
    except PipelineError:
        raise
    # Corrupt bytes can make Pillow's parsers fail in many ways; each means "undecodable".
    except Exception as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise PipelineError(
            f"cannot decode image {name} ({reason}): replace or delete that file"
        ) from error
