"""Every trial of a study as CSV: its rate, state, value, epochs and per-epoch pruning values.

    python docs/tuning/trials.py <journal file or tune.storage value> <study name> > trials.csv

The storage is read as `tune.storage` is (a bare file is a journal). `optuna trials` prints
the values but not the intermediate ones, which show where the pruner stopped each trial;
this adds them (`epoch_<k>`: exp(-val_loss) after epoch k).
"""

from __future__ import annotations

import csv
import sys

import optuna

from pipeline.tuning.storage import JOURNAL_PREFIX, open_storage, storage_url


def main() -> None:
    location, name = sys.argv[1:3]
    if not location.startswith(JOURNAL_PREFIX) and "://" not in location:
        location = JOURNAL_PREFIX + location
    storage = open_storage(storage_url(location))
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    epochs = max((step for trial in trials for step in trial.intermediate_values), default=0)
    writer = csv.writer(sys.stdout)
    writer.writerow(
        ["number", "learning_rate", "state", "value", "epochs", "seconds"]
        + [f"epoch_{k}" for k in range(1, epochs + 1)]
    )
    for trial in trials:
        seconds = trial.duration.total_seconds() if trial.duration else ""
        values = trial.intermediate_values
        writer.writerow(
            [trial.number, f"{trial.params['learning_rate']:.4g}", trial.state.name]
            + [trial.value if trial.value is not None else "", len(values), seconds]
            + [f"{values[k]:.4f}" if k in values else "" for k in range(1, epochs + 1)]
        )


if __name__ == "__main__":
    main()
