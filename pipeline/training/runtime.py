"""Where and how TensorFlow runs: the device, seeding and determinism, thread pools."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import keras
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from pipeline.common.errors import PipelineError
from pipeline.config.train_params import SpeedParams

log = logging.getLogger(__name__)


def device_description() -> str:
    """What trains here: each GPU TensorFlow sees by name, else the CPU's model and cores."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [
            tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in gpus
        ]
        return "GPU: " + ", ".join(names)
    return f"CPU: {_cpu_model()}, {os.cpu_count()} cores"


def _cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo ('' where there is none, as off Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def warn_if_bfloat16_is_emulated(speed: SpeedParams) -> None:
    """Mixed bfloat16 on an x86 CPU without AVX512-BF16 or AMX emulates every bfloat16 op."""
    flags = set(_cpuinfo("flags").split())
    if speed.precision != "mixed_bfloat16" or not flags or tf.config.list_physical_devices("GPU"):
        return
    if not flags & {"avx512_bf16", "amx_bf16"}:
        log.warning(
            "train.speed.precision mixed_bfloat16 on a CPU without native bfloat16 (no "
            "avx512_bf16 or amx_bf16): every bfloat16 op is emulated, 2.5-10x slower than "
            "float32 as measured on an AVX2 CPU (docs/speed.md); use float32 here"
        )


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; with `deterministic`, make TF ops deterministic."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        # Process-wide: an earlier deterministic training would otherwise keep XLA off.
        tf_config.disable_op_determinism()


def configure_threads(speed: SpeedParams) -> None:
    """Size TensorFlow's thread pools; they can only change before TensorFlow first runs."""
    wanted = (speed.intra_op_threads, speed.inter_op_threads)
    current = (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )
    if wanted == current:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(speed.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(speed.inter_op_threads)
    except RuntimeError as error:
        raise PipelineError(
            f"cannot change thread settings to {wanted} once TensorFlow has started "
            f"(they are {current}); run one training configuration per process"
        ) from error


@contextlib.contextmanager
def deterministic_kernels_required(deterministic: bool) -> Iterator[None]:
    """Turn TensorFlow's refusal of an op without a deterministic kernel (some GPU kernels
    have none) into one message naming the choice: TensorFlow raises it at the op's first
    run, which depends on the device and TensorFlow's version, so it is not known ahead."""
    try:
        yield
    except tf.errors.UnimplementedError as error:
        if not deterministic or "eterministic" not in error.message:
            raise
        first_line = error.message.strip().splitlines()[0]
        raise PipelineError(
            f"train.deterministic is on, but TensorFlow has no deterministic kernel for an op "
            f"of this run on {device_description()} ({first_line}). Set "
            "train.deterministic: false to train anyway (reruns then differ slightly), or "
            "train on the CPU (CUDA_VISIBLE_DEVICES=)"
        ) from error
