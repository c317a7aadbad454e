"""What image data look like to gen_jax: raw 8-bit images ``{'x': uint8 [B, H, W, C], 'label': int32 [B]}``.

Each family's objective applies its own preprocessing (:mod:`gen_jax.data.preprocess`); where images
come from is :mod:`gen_jax.data.sources`, how they are batched :mod:`gen_jax.data.pipeline`.
"""

from __future__ import annotations

import numpy as np

# The tfds datasets the standard configs use (any prepared tfds image dataset works: data.name).
IMAGE_DATASETS = ("mnist", "fashion_mnist", "cifar10")


class DatasetNotFoundError(FileNotFoundError):
    """A tfds dataset is not prepared in the data directory and cannot be downloaded here."""


def check_images(images, labels, what: str = "images") -> None:
    """Raises ValueError naming the problem unless ``images`` is uint8 [N, H, W, C] (8-bit pixels in
    0..255, as tfds stores them: every family's pre-processing starts from that) and ``labels`` is an
    integer array [N] with values >= 0."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if hasattr(images, "shape") else type(images).__name__
        hint = (" (floats in [0, 1]? convert with np.round(x * 255).astype(np.uint8))"
                if getattr(images, "dtype", None) is not None and np.issubdtype(images.dtype, np.floating) else "")
        raise ValueError(f"{what}: expected uint8 images [N, H, W, C] with pixels in 0..255, got {got}{hint}")
    if images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{what}: expected channels last [N, H, W, C] with C in (1, 3, 4), got shape "
                         f"{images.shape} (channels first? use np.moveaxis(x, 1, -1))")
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}: expected integer labels of shape ({len(images)},), got {labels.dtype} "
                         f"{labels.shape}")
    if len(labels) and labels.min() < 0:
        raise ValueError(f"{what}: labels must be >= 0, got min {labels.min()}")
