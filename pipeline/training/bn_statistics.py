"""Whether BatchNormalization's moving statistics can have forgotten their start in a run."""

from __future__ import annotations

import logging

from pipeline.config.train_params import TrainParams

log = logging.getLogger(__name__)

BN_START_LEFT_LIMIT = 0.01  # share of BN's initial moving statistics a run may leave


def warn_if_bn_statistics_lag(settings: TrainParams, total_steps: int) -> None:
    """Warn when BatchNormalization's moving statistics cannot have forgotten their start."""
    lag = bn_statistics_lag(settings, total_steps)
    if lag is not None:
        log.warning("%s: validation and test accuracy will understate the model", lag)


def bn_statistics_lag(settings: TrainParams, total_steps: int) -> str | None:
    """Why BatchNormalization's moving statistics still hold their start after a run, or None.

    They begin at mean 0, variance 1 and move by (1 - momentum) per step; after n steps a
    share momentum**n of the start is left. The variance of sigmoid outputs is ~0.01, so
    even 10% left makes inference divide by a standard deviation several times too large:
    a short run then validates near chance though it trains well.
    """
    left = settings.bn_momentum**total_steps
    if not settings.batch_norm or left <= BN_START_LEFT_LIMIT:
        return None
    return (
        f"{total_steps} training steps at train.bn_momentum {settings.bn_momentum:g} leave "
        f"{100 * left:.0f}% of BatchNormalization's initial moving statistics (variance 1, "
        "where the sigmoid outputs' is ~0.01) in the ones validation and test use. Lower "
        "train.bn_momentum (e.g. 0.9) or train more steps"
    )
