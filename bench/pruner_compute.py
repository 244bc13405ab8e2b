"""The share of a study's epochs each pruner trains, on simulated trials, with the project's
own pruner settings (pipeline.tuning.spec.make_pruner) and step numbering.

    python bench/pruner_compute.py [--trials 12] [--epochs 10] [--studies 30]

Each simulated trial has a quality drawn at random; after every epoch it reports that quality
plus a little noise, as the -val_loss a real trial reports. Trials arrive in random order, as
TPE's first (random) proposals do. Prints, per pruner, the epochs trained as a share of the
same trials unpruned: mean and range over the studies. Figures only: a model of real studies,
where quality drifts across epochs and later proposals are better; measure those with
`tuned.json`'s `epochs` field.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import optuna
from optuna.trial import TrialState

from pipeline.config.params import TuneParams
from pipeline.tuning.spec import make_pruner

PRUNERS = ("successive_halving", "hyperband", "median", "none")


def epochs_share(kind: str, trials: int, epochs: int, seed: int, noise: float) -> float:
    """Epochs trained by one simulated study with pruner `kind`, over trials × epochs."""
    rng = np.random.default_rng(seed)
    pruner = make_pruner(TuneParams.model_validate({"pruner": {"kind": kind}}), epochs)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    trained = 0
    for _ in range(trials):
        trial, quality = study.ask(), rng.normal()
        state = TrialState.COMPLETE
        for epoch in range(1, epochs + 1):
            trained += 1
            trial.report(quality + noise * rng.normal(), epoch)
            if trial.should_prune():
                state = TrialState.PRUNED
                break
        study.tell(trial, quality if state == TrialState.COMPLETE else None, state=state)
    return trained / (trials * epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--studies", type=int, default=30)
    parser.add_argument("--noise", type=float, default=0.1, help="per-epoch noise, in SDs")
    args = parser.parse_args()
    optuna.logging.set_verbosity(logging.WARNING)
    print(f"{args.studies} studies of {args.trials} trials x {args.epochs} epochs")
    for kind in PRUNERS:
        shares = [
            epochs_share(kind, args.trials, args.epochs, seed, args.noise)
            for seed in range(args.studies)
        ]
        print(
            f"{kind:>18}: {100 * np.mean(shares):5.1f}% of the unpruned epochs "
            f"(range {100 * min(shares):.0f}-{100 * max(shares):.0f}%)"
        )


if __name__ == "__main__":
    main()
