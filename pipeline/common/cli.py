"""Shared entry-point plumbing: logging set-up and the one-line error contract."""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
from collections.abc import Callable
from types import FrameType

from pipeline.common.errors import PipelineError
from pipeline.config.layout import Stores
from pipeline.config.params import Params, load_params

log = logging.getLogger("pipeline")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options every stage accepts (`--params`, `--debug`)."""
    parser.add_argument("--params", default="params.yaml", help="parameters file")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks and debug logging"
    )


def stage_parser(
    description: str | None, variant: bool = False, seed: bool = False
) -> argparse.ArgumentParser:
    """The argument parser of a stage: `[variant] [--seed N] [--params FILE] [--debug]`."""
    parser = argparse.ArgumentParser(description=description)
    if variant:
        parser.add_argument("variant", help="a key of `variants` in params.yaml")
    if seed:
        parser.add_argument(
            "--seed", type=int, help="training seed (default: the first of `seeds` in params.yaml)"
        )
    add_common_arguments(parser)
    return parser


def run_stage(args: argparse.Namespace, body: Callable[[Params], object]) -> None:
    """Load `args.params` and call `body` with them; a user error (bad params included)
    prints one line and exits 1, without a traceback (`--debug` shows it)."""
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # `dvc exp` / `dvc queue kill` and schedulers stop processes with SIGTERM: treat it as
    # Ctrl-C, so that every stage cleans up (temporary files, MLflow runs marked KILLED).
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        body(load_params(args.params))
    except PipelineError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:  # a full disk, a folder turned read-only or into a file
        if args.debug:
            raise
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted; no output was written. Run the stage again.", file=sys.stderr)
        sys.exit(130)
    except Exception as error:
        lost = describe_lost_server(error)
        if lost is None or args.debug:
            raise
        print(f"error: {lost}", file=sys.stderr)
        sys.exit(1)


def describe_os_error(error: OSError) -> str:
    """What the operating system refused, and the way out, in one line."""
    where = f" ({error.filename})" if error.filename else ""
    return (
        f"the operating system refused a file operation{where}: "
        f"{error.strerror or error}; free disk space or fix the path's permissions, then run "
        "again (--debug shows where it happened)"
    )


def describe_lost_server(error: BaseException) -> str | None:
    """One line for a tracking server that stopped answering mid-stage, or None for any other
    error. MLflow raises it as an MlflowException "API request to <url> failed with exception
    ..." once its retries are spent, and again when the run's end cannot be recorded; the
    first is found down the chain. Looked up in sys.modules: a stage that never imported
    MLflow cannot have lost its server, and stages without MLflow do not import it for this."""
    exceptions = sys.modules.get("mlflow.exceptions")
    if exceptions is None:
        return None
    cause: BaseException | None = error
    lost = None
    while cause is not None:
        found = re.match(r"API request to (\w+://[^/\s]+)\S* failed", str(cause))
        if isinstance(cause, exceptions.MlflowException) and found:
            lost = found[1]
        cause = cause.__cause__ or cause.__context__
    if lost is None:
        return None
    return (
        f"the MLflow tracking server {lost} stopped answering during the stage (MLflow's "
        "retries, MLFLOW_HTTP_REQUEST_MAX_RETRIES, are spent); start it again and rerun "
        "`dvc repro`: with train.resume: true, training continues from its last completed epoch"
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_seed_stage(
    description: str | None,
    run: Callable[[Params, str, int, Stores], object],
    argv: list[str] | None = None,
) -> None:
    """`main()` of a stage per variant and training seed (train, evaluate): parse
    `<variant> [--seed N]`, then call `run(params, variant, seed, stores)` through run_stage;
    without --seed, the first of params.yaml's `seeds`."""
    args = stage_parser(description, variant=True, seed=True).parse_args(argv)
    run_stage(
        args,
        lambda params: run(
            params,
            args.variant,
            params.seeds[0] if args.seed is None else args.seed,
            Stores.from_environment(),
        ),
    )
