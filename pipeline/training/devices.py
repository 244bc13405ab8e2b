"""One GPU per training process on a machine with several.

`dvc queue start -j N` and N `python -m pipeline.tune` workers start N processes that would
each see every GPU, and TensorFlow would put them all on the first one, each reserving most
of its memory. Instead, each training process claims a free GPU before TensorFlow first
touches one: it holds an exclusive lock on `<project root>/.cache/gpu-locks/gpu-<uuid>`,
makes only that GPU visible (CUDA_VISIBLE_DEVICES), and keeps the lock until it exits (the
operating system releases it even when the process is killed). With every GPU taken, it
waits for one. A CUDA_VISIBLE_DEVICES set by the user is respected as it is.

GPUs are named by UUID, which CUDA_VISIBLE_DEVICES accepts: the index `nvidia-smi` prints
orders GPUs by PCI bus, CUDA's by speed unless CUDA_DEVICE_ORDER says otherwise, so an
index could name another GPU to CUDA than the one claimed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

LOCK_FOLDER = Path(".cache") / "gpu-locks"
VISIBLE = "CUDA_VISIBLE_DEVICES"
_HELD: list[GpuClaim] = []  # claims live as long as the process


@dataclass
class GpuClaim:
    """A GPU this process holds until it exits (or `release`)."""

    uuid: str
    lock: IO[str]

    def release(self) -> None:
        self.lock.close()  # closing the file drops the lock
        if self in _HELD:
            _HELD.remove(self)


def nvidia_gpus() -> list[str]:
    """The UUIDs of the NVIDIA GPUs `nvidia-smi` lists; none without the tool or a driver."""
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


def claim_gpu(
    root: Path, gpus: list[str] | None = None, poll_seconds: float = 5.0
) -> GpuClaim | None:
    """Claim a free GPU among `gpus` (default: nvidia-smi's) for this process, waiting while
    all are taken; None when there is no GPU or CUDA_VISIBLE_DEVICES is already set."""
    if VISIBLE in os.environ:
        log.info("%s=%s set: using those GPUs as they are", VISIBLE, os.environ[VISIBLE])
        return None
    gpus = nvidia_gpus() if gpus is None else gpus
    if not gpus:
        return None
    folder = root / LOCK_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    waiting_logged = False
    while True:
        for uuid in gpus:
            claim = _try_lock(folder / f"gpu-{uuid}", uuid)
            if claim is not None:
                _HELD.append(claim)
                os.environ[VISIBLE] = uuid
                log.info("training on GPU %s (of %s)", uuid, ", ".join(gpus))
                return claim
        if not waiting_logged:
            log.info("all %d GPU(s) are in use by other runs of this project; waiting", len(gpus))
            waiting_logged = True
        time.sleep(poll_seconds)


def _try_lock(path: Path, uuid: str) -> GpuClaim | None:
    lock = path.open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return GpuClaim(uuid, lock)
