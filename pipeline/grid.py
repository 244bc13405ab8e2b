"""Grids of trainings on any number of workers and machines, through an Optuna study.

    python -m pipeline.grid declare NAME --factor KEY=V1,V2 ... [--variants ...] --seeds 1-10
    python -m pipeline.grid work NAME [--workers N]
    python -m pipeline.grid status NAME

`declare` crosses the factors (any dotted params.yaml keys) with the variants and seeds and
enqueues every cell as a trial of the study NAME, recording the commit and the fetched data
it was declared on. `work` claims cells until none is left; start it on every machine (the
study on PostgreSQL, runs in a shared `mlflow server`). Each cell trains and evaluates
through the train@ and evaluate@ stages' own functions. `status` shows the cells done,
diverged, running, failed and waiting. Summarize a grid with
`python -m pipeline.ablation --grid NAME`. docs/team.md shows a grid on several machines.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.common.cli import add_common_arguments, run_stage
from pipeline.common.errors import PipelineError
from pipeline.config.layout import Stores
from pipeline.config.params import Params
from pipeline.training.devices import nvidia_gpus

log = logging.getLogger(__name__)

# One worker per core, each with one thread: on 2 cores, 1.31x the throughput of one worker
# with both (docs/grids.md, measured side by side).
DEFAULT_WORKERS_DOC = "one per core, one thread each"


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m pipeline.grid {declare,work,status}`."""
    args = parser().parse_args(argv)
    _optuna_logs_as_ours()
    run_stage(args, lambda params: args.command(params, args))


def _optuna_logs_as_ours() -> None:
    """Optuna's messages through the stage's logging set-up, like every other message."""
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


def parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per action."""
    top = argparse.ArgumentParser(
        prog="python -m pipeline.grid",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = top.add_subparsers(required=True, metavar="{declare,work,status}")
    declare = commands.add_parser("declare", help="enqueue every cell of a new grid")
    declare.add_argument("name", help="the grid's name (its Optuna study)")
    declare.add_argument(
        "--factor",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a params.yaml key and its values, e.g. train.learning_rate=1e-3,3.2e-3; repeat "
        "for more factors (one value: a setting every cell shares)",
    )
    declare.add_argument(
        "--variants", nargs="+", help="variants to train (default: every one in params.yaml)"
    )
    declare.add_argument(
        "--seeds",
        nargs="+",
        required=True,
        type=_seeds,
        help="training seeds: numbers or ranges, e.g. 1-10 or 4 5 6",
    )
    declare.set_defaults(command=run_declare)
    work = commands.add_parser("work", help="claim and run cells until none is left")
    work.add_argument("name")
    work.add_argument(
        "--workers",
        type=_positive,
        help="worker processes on this machine (default: one per GPU where there are GPUs, "
        f"else {DEFAULT_WORKERS_DOC})",
    )
    work.add_argument(
        "--threads",
        type=_positive,
        help="TensorFlow threads per worker (default: this machine's cores / workers)",
    )
    work.add_argument(
        "--heartbeat-interval",
        type=_positive,
        default=30,
        metavar="SECONDS",
        help="a running cell marks itself alive this often (default 30)",
    )
    work.add_argument(
        "--heartbeat-grace",
        type=_positive,
        default=300,
        metavar="SECONDS",
        help="a cell silent this long is retried by another worker (default 300)",
    )
    work.set_defaults(command=run_work)
    status = commands.add_parser("status", help="cells done, diverged, running, failed, waiting")
    status.add_argument("name")
    status.add_argument("--cells", action="store_true", help="also list every cell")
    status.set_defaults(command=run_status)
    for command in (declare, work, status):
        command.add_argument(
            "--storage",
            help="the study storage (default: tune.storage in params.yaml): journal:<file> or "
            "postgresql://user@host/db",
        )
        add_common_arguments(command)
    return top


def _seeds(text: str) -> list[int]:
    first, dash, last = text.partition("-")
    try:
        if dash:
            return list(range(int(first), int(last) + 1))
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a seed or a range of seeds: {text!r}") from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def _storage(params: Params, args: argparse.Namespace, root: Path) -> str:
    from pipeline.tuning.storage import storage_url

    return storage_url(args.storage or params.tune.storage, root)


def run_declare(params: Params, args: argparse.Namespace) -> None:
    """Enqueue every cell of a new grid on this checkout's commit and fetched data."""
    from pipeline.grids.cells import parse_factor
    from pipeline.grids.lineage import DataDigests, current_lineage
    from pipeline.grids.study import Declaration, declare
    from pipeline.tuning.storage import describe_storage, open_storage

    root = Stores.from_environment().root
    factors = dict(parse_factor(text) for text in args.factor)
    if len(factors) != len(args.factor):
        raise PipelineError("a factor is given twice: give each key once, its values together")
    seeds = sorted({seed for group in args.seeds for seed in group})
    variants = args.variants or list(params.variants)
    declaration = Declaration(
        base=yaml.safe_load(Path(args.params).read_text()),
        factors=factors,
        variants=variants,
        seeds=seeds,
        lineage=current_lineage(root, params, DataDigests()),
    )
    url = _storage(params, args, root)
    declare(args.name, declaration, open_storage(url))
    print(
        f"grid {args.name}: {len(declaration.cells())} cells in {describe_storage(url)}; "
        f"start workers with `python -m pipeline.grid work {args.name}`"
    )


def run_work(params: Params, args: argparse.Namespace) -> None:
    """Work on the grid here: in this process, or in several worker processes."""
    from pipeline.grids.study import open_grid
    from pipeline.grids.worker import GridWorker
    from pipeline.tuning.storage import Heartbeat, open_storage

    gpus = nvidia_gpus()
    workers = args.workers or (len(gpus) if gpus else cores())
    threads = args.threads or max(1, cores() // workers)
    stores = Stores.from_environment()
    heartbeat = Heartbeat(args.heartbeat_interval, args.heartbeat_grace)
    storage = open_storage(_storage(params, args, stores.root), heartbeat)
    study, declaration = open_grid(args.name, storage)
    worker = GridWorker(args.name, study, storage, declaration, stores, threads, heartbeat)
    worker.check_lineage()  # once here, before any worker process starts
    if workers == 1:
        report = worker.work()
        log.info("this worker: %s", report.describe())
        return
    log.info("%d workers, %d thread(s) each", workers, threads)
    command = [
        sys.executable, "-m", "pipeline.grid", "work", args.name, "--workers", "1",
        "--threads", str(threads), "--params", args.params,
        "--heartbeat-interval", str(args.heartbeat_interval),
        "--heartbeat-grace", str(args.heartbeat_grace),
        *(["--storage", args.storage] if args.storage else []),
        *(["--debug"] if args.debug else []),
    ]  # fmt: skip
    children = [subprocess.Popen(command) for _ in range(workers)]
    try:
        codes = [child.wait() for child in children]
    except KeyboardInterrupt:
        for child in children:
            child.send_signal(signal.SIGTERM)  # each puts its cell back in the queue
        for child in children:
            child.wait()
        raise
    if any(codes):
        raise PipelineError(
            f"{sum(1 for code in codes if code)} of {workers} workers stopped with an error "
            "(their messages are above)"
        )


def run_status(params: Params, args: argparse.Namespace) -> None:
    """Print the grid's counts and, with --cells, every cell."""
    from pipeline.grids.progress import cell_rows, describe, progress_table
    from pipeline.grids.study import open_grid
    from pipeline.tuning.storage import open_storage

    storage = open_storage(_storage(params, args, Stores.from_environment().root))
    study, declaration = open_grid(args.name, storage)
    rows = cell_rows(study)
    print(f"{describe(args.name, rows)} ({declaration.lineage.describe()})")
    if args.cells:
        print(progress_table(rows))


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
