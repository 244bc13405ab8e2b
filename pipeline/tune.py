"""Stage `tune@<variant>`: choose the learning rate a variant trains with."""

from __future__ import annotations

import argparse
import logging

from pipeline.cli import add_common_arguments, run_stage
from pipeline.files import write_json
from pipeline.layout import variant_files
from pipeline.params import load_params

log = logging.getLogger(__name__)


def main() -> None:
    """Entry point of `python -m pipeline.tune <variant>`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant", help="a key of `variants` in params.yaml")
    add_common_arguments(parser)
    run_stage(_run, parser.parse_args())


def _run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    settings = params.variant(args.variant)
    files = variant_files(params.paths, args.variant)
    write_json(files.tuned, {"learning_rate": settings.learning_rate, "source": "params"})
    log.info("%s: learning rate %g from params.yaml", args.variant, settings.learning_rate)


if __name__ == "__main__":
    main()
