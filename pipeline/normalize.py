"""Stage `normalize`: split off a validation set, then normalize with training statistics."""

from __future__ import annotations

import logging

import numpy as np

from pipeline.cifar10.sampling import stratified_sample
from pipeline.common.cli import run_stage, stage_parser
from pipeline.common.errors import PipelineError
from pipeline.common.files import read_npz, write_npz_and_json
from pipeline.config.layout import RAW_KEYS
from pipeline.config.params import NormalizeParams, Params
from pipeline.records.data import NormalizationStats

log = logging.getLogger(__name__)


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): `fraction` of the labels held out, stratified, seeded; with
    `fraction` 0, every image is kept and none held out."""
    if fraction == 0:
        return np.arange(len(labels)), np.empty(0, dtype=np.int64)
    size = round(len(labels) * fraction)
    held_out_indices = stratified_sample(labels, size, np.random.default_rng(seed))
    keep = np.ones(len(labels), dtype=bool)
    keep[held_out_indices] = False
    if not keep.any() or len(held_out_indices) == 0:
        raise PipelineError(
            f"data.val_fraction {fraction} of {len(labels)} training images leaves an empty "
            "training or validation split: raise data.subset or change data.val_fraction"
        )
    return np.flatnonzero(keep), held_out_indices


def compute_stats(x_train: np.ndarray, params: NormalizeParams) -> NormalizationStats:
    """The normalization's parameters, from the training split only (pixel units, 0-255)."""
    if params.method == "standardize":
        moments = channel_moments(x_train)
        return NormalizationStats(method="standardize", mean=moments["mean"], std=moments["std"])
    if params.method == "scale":
        return NormalizationStats(method="scale", scale=1.0 / 255.0)
    return NormalizationStats(method="article", axis=1, order=2)


def apply_normalization(x: np.ndarray, stats: NormalizationStats) -> np.ndarray:
    """Normalize uint8 images with `stats` into a new float32 array."""
    values = x.astype(np.float32)
    if stats.method == "standardize":
        values -= np.asarray(stats.mean, dtype=np.float32)
        values /= np.asarray(stats.std, dtype=np.float32)
    elif stats.method == "scale":
        values *= np.float32(stats.scale)
    else:
        # keras.utils.normalize(x, axis=1): each column of each channel to unit L2 norm
        # along the image rows (axis 1), zero vectors left as they are.
        norms = np.linalg.norm(values, ord=2, axis=stats.axis, keepdims=True)
        norms[norms == 0] = 1
        values /= norms
    return values


def channel_moments(x: np.ndarray, chunk: int = 4096) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation of images (N, H, W, C).

    Sums are accumulated in float64 chunk by chunk: float32 sums over 1e8 values drift by
    more than 1e-3, and a float64 copy of the whole set would double peak memory.
    """
    total = np.zeros(x.shape[-1])
    total_of_squares = np.zeros(x.shape[-1])
    for start in range(0, len(x), chunk):
        # Channels first and contiguous: row sums are several times faster than column sums.
        channels = np.ascontiguousarray(
            x[start : start + chunk].reshape(-1, x.shape[-1]).T, dtype=np.float64
        )
        total += channels.sum(axis=1)
        total_of_squares += np.einsum("ij,ij->i", channels, channels)
    count = x.size // x.shape[-1]
    mean = total / count
    variance = np.maximum(total_of_squares / count - np.square(mean), 0.0)
    return {"mean": mean.tolist(), "std": np.sqrt(variance).tolist()}


def prepare(
    raw: dict[str, np.ndarray], params: NormalizeParams, val_fraction: float, seed: int
) -> tuple[dict[str, np.ndarray], NormalizationStats]:
    """Split and normalize a fetched dataset; returns (arrays, stats report)."""
    keep, held_out = stratified_split(raw["y_train"], val_fraction, seed)
    x_train, x_val = raw["x_train"][keep], raw["x_train"][held_out]
    stats = compute_stats(x_train, params)
    arrays = {
        "x_train": apply_normalization(x_train, stats),
        "y_train": raw["y_train"][keep],
        "x_val": apply_normalization(x_val, stats),
        "y_val": raw["y_train"][held_out],
        "x_test": apply_normalization(raw["x_test"], stats),
        "y_test": raw["y_test"],
        "class_names": raw["class_names"],
    }
    report = stats.model_copy(
        update={
            "counts": {split: int(len(arrays[f"y_{split}"])) for split in ("train", "val", "test")},
            "normalized_moments": {
                split: channel_moments(arrays[f"x_{split}"])
                for split in ("train", "val", "test")
                if len(arrays[f"x_{split}"])  # no validation split when val_fraction is 0
            },
        }
    )
    return arrays, report


def run(params: Params) -> NormalizationStats:
    """Split and normalize the fetched dataset; write the arrays and their statistics."""
    raw = read_npz(params.paths.raw_dataset, RAW_KEYS)
    arrays, report = prepare(raw, params.normalize, params.data.val_fraction, params.seed)
    write_npz_and_json(
        params.paths.prepared_dataset,
        arrays,
        params.paths.normalization_stats,
        report.model_dump(mode="json", exclude_none=True),
    )
    log.info(
        "normalized with %s: train %d, val %d, test %d images",
        report.method,
        *report.counts.values(),
    )
    return report


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m pipeline.normalize`."""
    run_stage(stage_parser(__doc__).parse_args(argv), run)


if __name__ == "__main__":
    main()
