"""Wall time of `dvc repro` in this project: a run that brings it up to date, then a no-op.

    python bench/repro_time.py [--force]

Run it from the project root with the data source you use in params.yaml. `--force` reruns
every stage (the default experiment end to end); without it only out-of-date stages run.
The second `dvc repro` finds everything up to date: its time is DVC's own overhead of
checking the pipeline. Figures only: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import subprocess
import time


def timed_repro(*arguments: str) -> tuple[float, int]:
    """Seconds one `dvc repro` took, and how many stages it ran; raises if it fails."""
    started = time.perf_counter()
    completed = subprocess.run(
        ["dvc", "repro", *arguments], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"dvc repro failed:\n{completed.stderr}")
    return seconds, completed.stdout.count("Running stage")


def main() -> None:
    """Time both runs and print them."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--force", action="store_true", help="rerun every stage")
    args = parser.parse_args()
    seconds, stages = timed_repro(*(["--force"] if args.force else []))
    print(f"dvc repro{' --force' if args.force else ''}: {seconds:.1f} s, {stages} stages ran")
    seconds, stages = timed_repro()
    print(f"dvc repro, nothing to do: {seconds:.2f} s, {stages} stages ran")


if __name__ == "__main__":
    main()
