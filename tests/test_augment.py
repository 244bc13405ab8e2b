"""The random affine warp against Keras' legacy ImageDataGenerator, which the article used."""

from __future__ import annotations

import numpy as np
import pytest
from keras.src.legacy.preprocessing.image import ImageDataGenerator
from scipy import ndimage

from pipeline.config.train_params import AugmentationParams
from pipeline.training.augment import RandomAffine, affine_transforms, is_identity, warp

# ImageDataGenerator's transform parameters: shear in degrees, zx/zy zoom, tx/ty shifts in
# pixels (its tx moves along x, the columns), flip.
CASES = [
    {"shear": 0.2, "zx": 0.85, "zy": 1.15, "tx": 0.0, "ty": 0.0, "flip_horizontal": False},
    {"shear": 15.0, "zx": 1.2, "zy": 0.8, "tx": 3.0, "ty": -2.0, "flip_horizontal": True},
    {"shear": -11.3, "zx": 1.0, "zy": 1.0, "tx": 0.0, "ty": 0.0, "flip_horizontal": True},
    {"shear": 0.0, "zx": 0.9, "zy": 0.9, "tx": -1.5, "ty": 2.5, "flip_horizontal": False},
]


def smooth_image(seed: int = 0) -> np.ndarray:
    """A 32×32 RGB image with structure at several scales (so that a wrong warp shows)."""
    noise = np.random.default_rng(seed).random((32, 32, 3))
    return ndimage.gaussian_filter(noise, sigma=(2, 2, 0)).astype(np.float32)


@pytest.mark.parametrize("fill_mode", ["nearest", "reflect"])
@pytest.mark.parametrize("case", CASES, ids=lambda case: f"shear{case['shear']}")
def test_the_warp_equals_image_data_generators(case: dict[str, float], fill_mode: str) -> None:
    image = smooth_image()
    expected = ImageDataGenerator(fill_mode=fill_mode).apply_transform(image.copy(), case)
    column = {key: np.array([value], dtype=np.float32) for key, value in case.items()}
    transforms = affine_transforms(
        column["shear"],
        column["zx"],
        column["zy"],
        column["tx"],
        column["ty"],
        np.array([case["flip_horizontal"]]),
        height=32,
        width=32,
    )
    warped = np.asarray(warp(image[None], transforms, fill_mode))[0]
    assert np.abs(warped - expected).max() < 1e-5
    if case["shear"] or case["zx"] != 1 or case["tx"]:
        assert np.abs(warped - image).max() > 0.01  # the case does move pixels


def test_the_layer_is_seeded_and_flips_about_half() -> None:
    images = np.repeat(smooth_image()[None], 64, axis=0)
    flip_only = AugmentationParams(shear_degrees=0, zoom=0, horizontal_flip=True)
    out = np.asarray(RandomAffine(flip_only, seed=1)(images))
    flipped = np.array(
        [np.allclose(o, image[:, ::-1]) for o, image in zip(out, images, strict=True)]
    )
    kept = np.array([np.allclose(o, image) for o, image in zip(out, images, strict=True)])
    assert np.all(flipped | kept) and 16 < flipped.sum() < 48
    again = np.asarray(RandomAffine(flip_only, seed=1)(images))
    other = np.asarray(RandomAffine(flip_only, seed=2)(images))
    assert np.array_equal(out, again) and not np.array_equal(out, other)


def test_zoom_is_shared_or_independent_as_asked() -> None:
    shared = AugmentationParams(shear_degrees=0, zoom=0.3, horizontal_flip=False)
    independent = shared.model_copy(update={"independent_zoom": True})
    for params, same in ((shared, True), (independent, False)):
        transforms = np.asarray(RandomAffine(params, seed=0).random_transforms(64, 32, 32))
        zoom_x, zoom_y = transforms[:, 0], transforms[:, 4]  # no shear, no flip
        assert np.all((zoom_x >= 0.7) & (zoom_x <= 1.3) & (zoom_y >= 0.7) & (zoom_y <= 1.3))
        assert np.allclose(zoom_x, zoom_y) == same


def test_no_augmentation_is_recognised() -> None:
    assert is_identity(AugmentationParams(shear_degrees=0, zoom=0, horizontal_flip=False))
    assert not is_identity(AugmentationParams())
