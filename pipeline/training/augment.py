"""Training augmentation: one random affine warp per image, as Keras' ImageDataGenerator did.

The article's `ImageDataGenerator(shear_range=0.2, zoom_range=0.2, horizontal_flip=True)`
shears by an angle in degrees along x about the image centre, draws the x and y zoom
independently, flips half the images, and fills with the nearest edge pixel. Keras 3 has no
layer that does this (RandomShear takes factors and shears about a corner, RandomZoom keeps
the aspect ratio), so the matrices are built here as ImageDataGenerator built them and applied
with keras.ops.image.affine_transform, one warp for all of it.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from pipeline.config.train_params import AugmentationParams


def affine_transforms(
    shear_degrees: Any,
    zoom_x: Any,
    zoom_y: Any,
    shift_x: Any,
    shift_y: Any,
    flip: Any,
    height: int,
    width: int,
) -> Any:
    """Per image, the 8 numbers of the projective transform that maps each output pixel (x, y)
    to the input pixel it samples, for a batch of parameters (each of shape (N,)).

    ImageDataGenerator's matrix shift · shear · zoom, about the centre c: input = c + shift +
    T(output - c) with T = [[zx, -sin(s)·zy], [0, cos(s)·zy]], x along the columns and y
    along the rows (ImageDataGenerator's `tx` is shift_x). A flipped image samples the warp
    at x' = width - 1 - x, which is the warp followed by a horizontal flip.
    """
    shear = shear_degrees * (math.pi / 180.0)
    centre_x, centre_y = (width - 1) / 2.0, (height - 1) / 2.0
    zeros = ops.zeros_like(zoom_x)
    a0, a1 = zoom_x, -ops.sin(shear) * zoom_y  # input x from output x and y
    b1 = ops.cos(shear) * zoom_y  # input y from output y (x does not enter)
    a2 = centre_x + shift_x - a0 * centre_x - a1 * centre_y
    b2 = centre_y + shift_y - b1 * centre_y
    sign = 1.0 - 2.0 * ops.cast(flip, "float32")  # -1 where flipped
    flipped = ops.cast(flip, "float32") * (width - 1)
    # Substituting x = flipped + sign·x' into the rows above.
    row_x = (a0 * sign, a1, a2 + a0 * flipped)
    row_y = (zeros, b1, b2)
    return ops.stack([*row_x, *row_y, zeros, zeros], axis=1)


def warp(images: Any, transforms: Any, fill_mode: str) -> Any:
    """Apply per-image transforms with bilinear interpolation (ImageDataGenerator's order 1)."""
    return ops.image.affine_transform(
        images, transforms, interpolation="bilinear", fill_mode=fill_mode
    )


class RandomAffine(keras.layers.Layer):
    """A random shear, zoom, shift and horizontal flip per image, as one warp, seeded.

    Shear angles are drawn from ±`shear_degrees`, zoom factors from [1 - zoom, 1 + zoom]
    (x and y apart when `independent_zoom`, else one for both), shifts from ±the fraction of
    the image size. A zoom factor above 1 samples a larger area: the content shrinks.
    """

    def __init__(self, params: AugmentationParams, seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.params = params
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images: Any, training: bool = True) -> Any:
        if not training:
            return images
        height, width = int(images.shape[1]), int(images.shape[2])
        transforms = self.random_transforms(ops.shape(images)[0], height, width)
        return warp(images, transforms, self.params.fill_mode)

    def random_transforms(self, count: Any, height: int, width: int) -> Any:
        """Draw the warp of each of `count` images: (count, 8) projective transforms."""
        p = self.params

        def uniform(low: float, high: float) -> Any:
            return keras.random.uniform((count,), low, high, seed=self.seed_generator)

        shear = uniform(-p.shear_degrees, p.shear_degrees)
        zoom_x = uniform(1 - p.zoom, 1 + p.zoom)
        zoom_y = uniform(1 - p.zoom, 1 + p.zoom) if p.independent_zoom else zoom_x
        shift_x = uniform(-p.width_shift, p.width_shift) * width
        shift_y = uniform(-p.height_shift, p.height_shift) * height
        flip = uniform(0.0, 1.0) < (0.5 if p.horizontal_flip else 0.0)
        return affine_transforms(shear, zoom_x, zoom_y, shift_x, shift_y, flip, height, width)


def is_identity(params: AugmentationParams) -> bool:
    """True when the settings leave every image as it is (no layer needed)."""
    return not (
        params.shear_degrees
        or params.zoom
        or params.width_shift
        or params.height_shift
        or params.horizontal_flip
    )
