"""RMSprop's two epsilon conventions, against steps computed by hand."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.config.train_params import TrainParams
from pipeline.training.optimizers import RMSpropEpsilonOutside, make_optimizer

LR, RHO, EPS = 1e-3, 0.9, 1e-7
GRADIENTS = [np.array([1e-6, 0.5, -2.0], np.float32), np.array([3e-7, -0.1, 1.0], np.float32)]


def run_steps(optimizer: keras.optimizers.Optimizer) -> np.ndarray:
    weights = keras.Variable(np.ones(3, np.float32))
    for gradient in GRADIENTS:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(gradient), weights)])
    return np.asarray(weights)


def by_hand(outside: bool) -> np.ndarray:
    weights, velocity = np.ones(3, np.float64), np.zeros(3, np.float64)
    for gradient in GRADIENTS:
        velocity = RHO * velocity + (1 - RHO) * gradient.astype(np.float64) ** 2
        denominator = np.sqrt(velocity) + EPS if outside else np.sqrt(velocity + EPS)
        weights -= LR * gradient / denominator
    return weights


@pytest.mark.parametrize("convention", ["inside_sqrt", "outside_sqrt"])
def test_each_convention_steps_as_its_formula(convention: str) -> None:
    settings = TrainParams.model_validate({"learning_rate": LR, "rmsprop_epsilon": convention})
    optimizer = make_optimizer(settings)
    assert optimizer.epsilon == EPS and optimizer.rho == RHO
    expected = by_hand(outside=convention == "outside_sqrt")
    np.testing.assert_allclose(run_steps(optimizer), expected, rtol=1e-5, atol=1e-9)


def test_tiny_gradients_take_near_full_steps_only_with_the_old_convention() -> None:
    outside = 1 - by_hand(outside=True)[0]
    inside = 1 - by_hand(outside=False)[0]
    assert outside > 1e-3  # about lr / sqrt(1 - rho): a full step
    assert inside < 1e-5  # sqrt(eps) ≈ 3.2e-4 under the denominator swamps a 1e-6 gradient


def test_centered_or_momentum_forms_are_refused() -> None:
    with pytest.raises(ValueError, match="without centering or momentum"):
        RMSpropEpsilonOutside(learning_rate=LR, momentum=0.9)


def test_sgd_takes_its_momentum_from_the_settings() -> None:
    plain = make_optimizer(TrainParams(optimizer="sgd", learning_rate=0.1))
    heavy = make_optimizer(TrainParams(optimizer="sgd", learning_rate=0.1, sgd_momentum=0.9))
    assert isinstance(heavy, keras.optimizers.SGD)
    assert (plain.momentum, heavy.momentum) == (0.0, 0.9)
