"""Image datasets through ``tfds.data_source`` and the preprocessing each family applies.

Batches are raw 8-bit images ``{'x': uint8 [B, H, W, C], 'label': int32 [B]}``; each family's
objective applies its own preprocessing (:mod:`gen_jax.data.preprocess`).

The order of examples is a pure function of (seed, epoch): the batch at global step s is computable
in O(1) from s, so a resumed run reads exactly the batches an uninterrupted run would have read.
With several processes, each reads only its slice of every global batch.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import numpy as np

IMAGE_DATASETS = ("mnist", "fashion_mnist", "cifar10")


class DatasetNotFoundError(FileNotFoundError):
    """A tfds dataset is not prepared in the data directory and cannot be downloaded here."""


def load_tfds(name: str, split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reads a prepared tfds image dataset fully into memory.

    Returns:
      ``(images uint8 [N, H, W, C], labels int32 [N])``.

    Raises:
      DatasetNotFoundError: the dataset is not prepared in ``data_dir`` (tfds's default if ``None``),
        with instructions to prepare it.
    """
    import tensorflow_datasets as tfds  # imported lazily: toy-only runs never pay for it

    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except (tfds.core.registered.DatasetNotFoundError, AssertionError, FileNotFoundError,
            NotImplementedError) as e:  # tfds reports an unprepared folder in several ways
        where = data_dir or "tfds's default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
        fmt = _prepared_format(name, data_dir) if isinstance(e, NotImplementedError) else None
        if fmt is not None:
            raise DatasetNotFoundError(
                f"tfds dataset {name!r} is prepared in {where} in the {fmt} format, which tfds.data_source "
                f"cannot read at random; prepare it again with file_format='array_record' (tfds.data_source("
                f"'{name}', data_dir='DIR', download=True) does), or point data_dir at such a copy.") from None
        raise DatasetNotFoundError(
            f"tfds dataset {name!r} (split {split!r}) is not prepared in {where}. Either point data_dir "
            f"at a folder holding a prepared copy, or prepare it once on a machine with internet: "
            f"pip install tensorflow && python -c \"import tensorflow_datasets as tfds; "
            f"tfds.data_source('{name}', data_dir='DIR', download=True)\"."
        ) from None
    n = len(source)
    images, labels = [], []
    for start in range(0, n, 4096):
        idx = list(range(start, min(n, start + 4096)))
        try:
            rows = source.__getitems__(idx)  # one batched read
        except TypeError:  # tfds.testing.mock_data's source has no batched read
            rows = [source[i] for i in idx]
        images.append(np.stack([r["image"] for r in rows]))
        labels.append(np.asarray([r["label"] for r in rows], np.int32))
    images, labels = np.concatenate(images), np.concatenate(labels)
    check_images(images, labels, f"tfds {name!r} ({split})")
    return images, labels


def _prepared_format(name: str, data_dir: str | None) -> str | None:
    """The file format of a prepared copy of ``name`` in ``data_dir`` (from its dataset_info.json), or
    None if there is none."""
    import glob
    import json

    if not data_dir:
        return None
    for info in sorted(glob.glob(os.path.join(data_dir, name, "*", "dataset_info.json"))):
        try:
            with open(info) as f:
                return json.load(f).get("fileFormat", "tfrecord")
        except (OSError, ValueError):
            continue
    return None


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


@dataclasses.dataclass
class ImageBatches:
    """Deterministic, resumable batches over an in-memory image array.

    The order within epoch e is ``permutation(N)`` drawn from ``numpy.random.default_rng([seed, e])``;
    each epoch yields ``N // batch_size`` full batches (drop remainder, so shapes never change).
    With ``num_processes > 1`` process p receives rows ``[p*B/P, (p+1)*B/P)`` of every global batch.
    """

    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int32 [N]
    batch_size: int  # global batch size
    seed: int = 0
    shuffle: bool = True
    process_index: int = 0
    num_processes: int = 1

    def __post_init__(self):
        check_images(self.images, self.labels, "ImageBatches")
        n = len(self.images)
        if self.batch_size < 1 or self.batch_size > n:
            raise ValueError(f"batch_size must be in [1, {n}] (the dataset size), got {self.batch_size}")
        if self.batch_size % self.num_processes:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by the number of processes "
                             f"{self.num_processes}")
        self._cached_epoch = (None, None)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.images) // self.batch_size

    def _order(self, epoch: int) -> np.ndarray:
        if self._cached_epoch[0] != epoch:
            n = len(self.images)
            order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                     else np.arange(n))
            self._cached_epoch = (epoch, order)
        return self._cached_epoch[1]

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """The (process-local part of the) batch of global step ``step``, in O(1) of ``step``."""
        epoch, k = divmod(step, self.steps_per_epoch)
        rows = self._order(epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        local = self.batch_size // self.num_processes
        rows = rows[self.process_index * local:(self.process_index + 1) * local]
        return {"x": self.images[rows], "label": self.labels[rows]}

    def __call__(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        step = start_step
        while True:
            yield self.batch_at(step)
            step += 1

    def epoch(self) -> Iterator[dict[str, np.ndarray]]:
        """One pass in order over every full batch (for evaluation)."""
        for k in range(self.steps_per_epoch):
            rows = slice(k * self.batch_size, (k + 1) * self.batch_size)
            yield {"x": self.images[rows], "label": self.labels[rows]}
