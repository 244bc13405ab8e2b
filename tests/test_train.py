"""Training on tiny data: history, determinism, divergence, speed options."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import keras
import numpy as np
import pytest

from pipeline.common.errors import PipelineError
from pipeline.config.train_params import SpeedParams
from pipeline.records.history import HISTORY_FIELDS, read_history, write_history
from pipeline.train import final_metrics
from pipeline.training import runtime
from pipeline.training.fit import train_model
from pipeline.training.runtime import configure_threads
from tests.conftest import tiny_signal_data as tiny_data
from tests.conftest import tiny_train_settings as settings


def test_history_has_every_field_per_epoch(tmp_path) -> None:
    result = train_model(tiny_data(), settings(batch_norm=True), seed=1)
    assert [row["epoch"] for row in result.history] == [1, 2]
    for row in result.history:
        assert set(row) == set(HISTORY_FIELDS)
        assert all(math.isfinite(value) for value in row.values())
        assert row["images_per_second"] > 0
        assert row["learning_rate"] == pytest.approx(1e-3)
    # The history's last row is the trained model's own validation score.
    data = tiny_data()
    loss, accuracy = result.model.evaluate(data.x_val, data.y_val, verbose=0)
    assert result.history[-1]["val_accuracy"] == pytest.approx(accuracy)
    assert result.history[-1]["val_loss"] == pytest.approx(loss, rel=1e-5)
    metrics = final_metrics(result, 1e-3)
    assert metrics.epochs == 2
    assert metrics.best_val_accuracy == max(row["val_accuracy"] for row in result.history)
    write_history(tmp_path / "history.csv", result.history)
    assert read_history(tmp_path / "history.csv") == result.history


def test_same_seed_same_metrics_other_seed_differs() -> None:
    def losses(seed: int) -> list[float]:
        result = train_model(tiny_data(), settings(batch_norm=True), seed=seed)
        return [row["loss"] for row in result.history] + [row["val_loss"] for row in result.history]

    first = losses(7)
    assert losses(7) == first
    assert losses(8) != first


def test_epoch_fraction_shortens_epochs() -> None:
    result = train_model(tiny_data(n=64), settings(epoch_fraction=0.5, epochs=3), seed=0)
    assert len(result.history) == 3
    assert result.model.optimizer.iterations.numpy() == 3 * 2  # 32 images per epoch, batch 16


def test_non_finite_loss_fails_with_a_clear_message() -> None:
    # RMSprop moves every weight by about the learning rate at the first step: with 1e6, the
    # ReLU network's activations overflow at the next one, whatever the seed.
    exploding = settings(optimizer="rmsprop", learning_rate=1e6, activation="relu")
    with pytest.raises(PipelineError, match=r"training diverged: loss became nan at epoch 1"):
        train_model(tiny_data(), exploding, seed=0)


@pytest.mark.parametrize(
    "speed",
    [
        {"jit_compile": True},
        {"precision": "mixed_bfloat16"},
        {"precision": "mixed_bfloat16", "float32_nonlinearities": False},
        {"precision": "mixed_float16"},
        {"steps_per_execution": 3},
    ],
)
def test_speed_options_train_to_finite_metrics(speed: dict[str, Any]) -> None:
    jit = speed.get("jit_compile", False)
    result = train_model(
        tiny_data(),
        settings(epochs=1, batch_norm=True, speed=SpeedParams(**speed), deterministic=not jit),
        seed=0,
    )
    assert result.model.jit_compile == jit  # not silently switched off by Keras

    assert len(result.history) == 1
    assert all(math.isfinite(value) for value in result.history[0].values())
    precision = speed.get("precision", "float32")
    conv = result.model.get_layer("conv1")
    assert conv.compute_dtype == precision.removeprefix("mixed_")
    assert conv.variable_dtype == "float32"
    low = precision != "float32" and not speed.get("float32_nonlinearities", True)
    for layer in ("conv1_act", "conv1_bn", "dense_act"):
        assert result.model.get_layer(layer).compute_dtype == (
            precision.removeprefix("mixed_") if low else "float32"
        )
    scaled = isinstance(result.model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (precision == "mixed_float16")
    assert result.model.steps_per_execution == speed.get("steps_per_execution", 1)


def test_thread_settings_apply_before_tensorflow_starts() -> None:
    script = (
        "import tensorflow as tf\n"
        "from pipeline.config.train_params import SpeedParams\n"
        "from pipeline.training.runtime import configure_threads\n"
        "configure_threads(SpeedParams(intra_op_threads=1, inter_op_threads=1))\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads())\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert completed.stdout.split() == ["1", "1"]


def test_thread_settings_cannot_change_once_tensorflow_runs() -> None:
    train_model(tiny_data(), settings(), seed=0)  # TensorFlow is running from here on
    with pytest.raises(PipelineError, match="once TensorFlow has started"):
        configure_threads(SpeedParams(intra_op_threads=1))


@pytest.mark.parametrize(
    ("flags", "warned"),
    [("fpu avx2 fma", True), ("avx2 avx512f avx512_bf16", False), ("avx2 amx_bf16", False)],
)
def test_bfloat16_on_a_cpu_that_emulates_it_is_warned_about(
    flags: str, warned: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The CPU is the machine's; only its /proc/cpuinfo flags are stood in for.
    monkeypatch.setattr(runtime, "_cpuinfo", lambda field: flags if field == "flags" else "")
    runtime.warn_if_bfloat16_is_emulated(SpeedParams(precision="mixed_bfloat16"))
    runtime.warn_if_bfloat16_is_emulated(SpeedParams(precision="float32"))
    emulated = [r for r in caplog.records if "without native bfloat16" in r.getMessage()]
    assert len(emulated) == int(warned)


def test_steps_per_execution_trains_the_same_weights() -> None:
    """Only how often Python calls into TensorFlow changes: the same steps, the same model
    (which is why a study does not restart when it changes)."""
    one, three = (
        train_model(
            tiny_data(),
            settings(batch_norm=True, speed=SpeedParams(steps_per_execution=steps)),
            seed=4,
        )
        for steps in (1, 3)
    )
    assert three.model.optimizer.iterations.numpy() == one.model.optimizer.iterations.numpy() == 8
    for before, after in zip(one.model.get_weights(), three.model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)


def test_an_op_without_a_deterministic_kernel_is_refused_with_the_choice() -> None:
    """TensorFlow's error for such an op (raised on GPUs; no CPU op of this model has one,
    so the error is raised here as TensorFlow raises it)."""
    import tensorflow as tf

    missing = tf.errors.UnimplementedError(
        None, None, "A deterministic GPU implementation of SomeOp is not currently available."
    )
    refused = pytest.raises(PipelineError, match=r"no deterministic kernel.*SomeOp.*false")
    with refused, runtime.deterministic_kernels_required(True):
        raise missing
    # Without determinism asked for, TensorFlow's error passes as it is.
    with (
        pytest.raises(tf.errors.UnimplementedError),
        runtime.deterministic_kernels_required(False),
    ):
        raise missing
