"""The landscape probe's cost, in training steps: one measure against one training step of the
same model, in one process, for plain and bn.

    python bench/landscape_cost.py [--steps 60] [--measures 8]

Trains `--steps` steps of batch 32 (random images: the cost does not depend on them), then
times `--measures` landscape measures on the 256-image probe batch with the default five step
sizes. Prints seconds per step and per measure, their ratio, and the overhead of measuring
every N steps (ratio / N) for the N the docs discuss. Figures only: nothing passes or fails.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from pipeline.config.train_params import LandscapeParams, TrainParams
from pipeline.evidence.landscape import LandscapeProbe
from pipeline.training.fit import compiled_model
from pipeline.training.runtime import device_description, seed_everything

BATCH = 32
PROBE_IMAGES = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--measures", type=int, default=8)
    args = parser.parse_args()
    print(f"device: {device_description()}")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.steps * BATCH, 32, 32, 3)).astype(np.float32)
    y = (np.arange(len(x)) % 10).astype(np.int32)
    settings = LandscapeParams()
    multiples = settings.step_multiples
    for batch_norm in (False, True):
        seed_everything(0, deterministic=True)
        model = compiled_model(TrainParams(batch_norm=batch_norm))
        model.fit(x[: 4 * BATCH], y[: 4 * BATCH], batch_size=BATCH, epochs=1, verbose=0)  # warm up
        started = time.perf_counter()
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
        step_seconds = (time.perf_counter() - started) / args.steps
        probe = LandscapeProbe(model, x[:PROBE_IMAGES], y[:PROBE_IMAGES], settings)
        probe.measure()  # traces the function
        times = []
        for _ in range(args.measures):
            started = time.perf_counter()
            probe.measure()
            times.append(time.perf_counter() - started)
        measure_seconds = statistics.median(times)
        ratio = measure_seconds / step_seconds
        name = "bn" if batch_norm else "plain"
        overheads = ", ".join(f"every {n}: {100 * ratio / n:.1f}%" for n in (50, 100, 500, 1407))
        print(
            f"{name}: {step_seconds * 1000:.1f} ms per training step, {measure_seconds * 1000:.0f} "
            f"ms per measure ({len(multiples)} steps tried) = {ratio:.1f} training steps; "
            f"overhead {overheads}"
        )


if __name__ == "__main__":
    main()
