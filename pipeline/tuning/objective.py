"""One trial: train the variant at a sampled learning rate for the run's full length."""

from __future__ import annotations

import gc
import math
from typing import Any

import keras
import optuna

from pipeline.common.errors import TrainingDiverged
from pipeline.config.params import TuneParams
from pipeline.config.train_params import TrainParams
from pipeline.training.fit import train_model
from pipeline.training.inputs import TrainingData
from pipeline.tuning.spec import OBJECTIVE, PARAM


class EpochPruning(keras.callbacks.Callback):
    """Reports exp(-val_loss) after each epoch, numbered by epochs completed, and stops a
    trial the pruner judges behind.

    exp(-val_loss) is the geometric mean of the probability the model gives each validation
    image's true class: 0.1 at chance for ten classes, like accuracy, and on accuracy's 0..1
    scale, which is where Optuna and its dashboard put a pruned trial's last reported value
    beside the complete trials' accuracies. Unlike accuracy, it still ranks trials at chance.

    Written here because optuna_integration's TFKerasPruningCallback reports Keras' 0-based
    epoch index (so `n_warmup_steps: 1` meant 2 epochs, and no rung fell on the last epoch)
    and only a logged metric as it is: accuracy, which ties at chance for many trials early
    on, so that the pruner could not tell them apart.
    """

    def __init__(self, trial: optuna.trial.BaseTrial) -> None:
        super().__init__()
        self.trial = trial

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("val_loss")
        if loss is None or not math.isfinite(loss):
            return  # a diverged loss ends the trial through train_model's own check
        completed = epoch + 1
        self.trial.report(math.exp(-float(loss)), step=completed)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {completed}: val_loss {loss:.4f} is behind")


class Objective:
    """Train one trial's model at a sampled learning rate; its value is the last val_accuracy."""

    def __init__(self, data: TrainingData, settings: TrainParams, seed: int, tune: TuneParams):
        self.data = data
        self.settings = settings
        self.seed = seed
        self.tune = tune

    def __call__(self, trial: optuna.trial.BaseTrial, callbacks: list[Any] | None = None) -> float:
        """Train and return the validation accuracy; raises optuna.TrialPruned when pruned."""
        learning_rate = trial.suggest_float(PARAM, self.tune.lr_low, self.tune.lr_high, log=True)
        settings = self.settings.with_learning_rate(learning_rate)
        try:
            # Keep only the history: the model must be unreferenced when the session clears.
            result = train_model(
                self.data, settings, self.seed, callbacks=[*(callbacks or []), EpochPruning(trial)]
            )
            history = result.history
            del result
        except TrainingDiverged as error:
            # A learning rate that blows the loss up is a bad result, not a crash; PRUNED
            # tells the sampler to avoid it (FAIL would not). Any other error of training
            # (no deterministic kernel on this GPU, say) fails the trial and reaches the user.
            trial.set_user_attr("diverged", str(error))
            raise optuna.TrialPruned(f"diverged: {error}") from error
        finally:
            # One graph per trial would otherwise pile up: memory stays flat across trials.
            keras.backend.clear_session()
            gc.collect()
        accuracy = history[-1][OBJECTIVE]
        if not math.isfinite(accuracy):
            raise optuna.TrialPruned(f"{OBJECTIVE} is {accuracy}")
        return accuracy
