"""Stage `tune@<variant>`: choose the learning rate a variant trains with.

With `tune.n_trials: 0` the configured learning rate passes through at once, without
loading TensorFlow or the data. Otherwise the variant's Optuna study (pipeline/tuning/)
is run or continued until it holds `tune.n_trials` finished trials, and its best learning
rate is written for `train`.

`--n-trials` or `--storage` make the command a worker on the same study, outside DVC:
it writes no stage output, only logs the study's state. Several workers, on one machine
or many, cooperate on one study and stop together at the requested number of trials.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from pipeline.common.cli import add_common_arguments, run_stage
from pipeline.common.errors import PipelineError
from pipeline.config.layout import Stores, tuned_file
from pipeline.config.params import Params
from pipeline.records import write_record
from pipeline.records.runs import TunedRate
from pipeline.training.devices import claim_gpu

if TYPE_CHECKING:
    from pipeline.tuning.summary import StudySummary

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m pipeline.tune <variant> [--n-trials N] [--storage URL]`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant", help="a key of `variants` in params.yaml")
    parser.add_argument(
        "--n-trials",
        type=_positive_int,
        help="work on the study until it has this many finished (complete or pruned) trials; "
        "writes no tuned.json",
    )
    parser.add_argument(
        "--storage",
        help="Optuna storage instead of tune.storage: an SQLAlchemy URL "
        "(postgresql://user@host/db) or journal:<file>; writes no tuned.json",
    )
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    run_stage(
        args,
        lambda params: run(
            params, args.variant, Stores.from_environment(), args.n_trials, args.storage
        ),
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def run(
    params: Params,
    variant: str,
    stores: Stores,
    n_trials: int | None = None,
    storage: str | None = None,
) -> TunedRate | None:
    """The stage: write the variant's tuned.json and return it. With `n_trials` or `storage`,
    a worker on the study instead: it writes nothing and returns None."""
    settings = params.variant(variant)
    worker = n_trials is not None or storage is not None
    wanted = n_trials if n_trials is not None else params.tune.n_trials
    tuned_path = tuned_file(params.paths, variant)
    if wanted == 0 and not worker:
        passed = TunedRate(learning_rate=settings.learning_rate, source="params")
        write_record(tuned_path, passed)
        log.info("%s: learning rate %g from params.yaml", variant, settings.learning_rate)
        return passed
    if wanted == 0:
        raise PipelineError("nothing to tune: pass --n-trials N or set tune.n_trials")
    if settings.validation_data == "test":
        raise PipelineError(
            "tuning with train.validation_data: test would pick the learning rate on the test "
            "set, and the test accuracy would no longer measure the model fairly: tune with "
            "validation_data: split (data.val_fraction above 0), or set tune.n_trials: 0"
        )
    claim_gpu(stores.root)  # before TensorFlow first touches a GPU
    summary = _tune(params, variant, wanted, storage or params.tune.storage, stores)
    log.info("%s: %s", variant, summary.describe())
    if worker:
        return None
    tuned = TunedRate.model_validate(summary.tuned())
    write_record(tuned_path, tuned)
    return tuned


def _tune(
    params: Params, variant: str, n_trials: int, storage: str | None, stores: Stores
) -> StudySummary:
    """Run the variant's study; TensorFlow and Optuna are imported only here."""
    import optuna

    from pipeline.tracking import store
    from pipeline.tuning.data import load_tuning_data
    from pipeline.tuning.storage import storage_url
    from pipeline.tuning.worker import run_study

    store.check_server(stores.tracking_uri)  # before the storage is created or data loaded
    # Optuna's messages go through the stage's logging set-up, like every other message.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    settings = params.variant(variant)  # a trial trains as the run itself does
    data = load_tuning_data(
        params.paths.prepared_dataset, settings, params.tune.subset, params.seed
    )
    return run_study(
        params, variant, data, n_trials, storage_url(storage, stores.root), stores.tracking_uri
    )


if __name__ == "__main__":
    main()
