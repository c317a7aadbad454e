"""Data sources: random access to examples, read only where a step needs them.

Every source has ``len(source)``, ``source[i] -> {'x': array, 'label': int}`` and
``source.read(rows) -> {'x': [n, ...], 'label': int32 [n]}`` (one batched read), plus ``kind``
(``'image'``: uint8 [H, W, C]; ``'points'``: float32 [D]), ``shape``, ``num_classes`` and
``fingerprint()`` (a content hash of what it reads). That is grain's random-access data-source
contract, so a source goes straight into :class:`grain.MapDataset`; the batch order built on it
(:mod:`gen_jax.data.pipeline`) is a pure function of (seed, step).

Backends (:func:`open_source` picks one from a name):

* any prepared **tfds** dataset, read through ``tfds.data_source`` (array_record);
* a **.npy** file (read row by row with ``pread``: nothing is mapped, the process keeps only what it
  reads) or a **.npz** (``x``/``images``/``arr_0`` and optional ``y``/``label``; or Keras-style
  ``x_train``/``y_train``/``x_test``/``y_test``) of uint8 images [N, H, W(, C)] or float points [N, D];
* a **folder** of image files (PNG, JPEG, BMP, GIF, WebP), optionally one sub-folder per class
  (the label), optionally with ``train/`` and ``test/`` sub-folders as the splits.

Data without a test split is split once by a fixed permutation (seed 0, independent of the run's
seed): the last ``holdout`` fraction is the test split.

The package: :mod:`~gen_jax.data.sources.base` (the source contract, :class:`ArraySource`, the wrappers
:class:`Subset` and :class:`Resized`, :class:`Splits`), :mod:`~gen_jax.data.sources.files` (.npy/.npz files,
image folders), :mod:`~gen_jax.data.sources.tfds` (tfds datasets); this module holds :func:`open_source` and
re-exports their names.
"""

from __future__ import annotations

import os

from gen_jax.data.images import DatasetNotFoundError, check_images
from gen_jax.data.sources.base import (ArraySource, DataError, Resized, Source, Splits, Subset,
                                       center_crop_resize)
from gen_jax.data.sources.files import IMAGE_SUFFIXES, FolderSource, NpySource, _array_splits, _folder_splits
from gen_jax.data.sources.tfds import TfdsSource, load_tfds

__all__ = [
    "ArraySource", "DataError", "DatasetNotFoundError", "FolderSource", "IMAGE_SUFFIXES", "NpySource", "Resized",
    "Source", "Splits", "Subset", "TfdsSource", "center_crop_resize", "check_images", "load_tfds", "open_source",
]


def open_source(name: str, *, data_dir: str | None = None, train_split: str = "train", test_split: str = "test",
                image_size: int | None = None, holdout: float = 0.1) -> Splits:
    """The train and test splits of ``name``: a path to a .npy/.npz file or a folder, else a tfds name.

    Raises:
      DataError: the file or folder cannot be used (the message says why), or ``name`` is none of these.
      DatasetNotFoundError: a tfds dataset that is not prepared in ``data_dir``.
    """
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        splits = _folder_splits(path, image_size is not None, holdout)
    elif os.path.isfile(path):
        splits = _array_splits(path, holdout)
    elif name.endswith((".npy", ".npz")) or os.sep in name:
        raise DataError(f"{name}: no such file or folder")
    else:
        splits = Splits(TfdsSource(name, train_split, data_dir), TfdsSource(name, test_split, data_dir))
        if image_size is None and getattr(splits.train, "variable_size", False):
            raise DataError(f"tfds dataset {name!r} has images of varying sizes; choose one with data.image_size")
    if image_size is not None:
        splits = Splits(Resized(splits.train, image_size), Resized(splits.test, image_size))
    if splits.train.shape != splits.test.shape:
        raise DataError(f"{name}: the train examples are {splits.train.shape}, the test ones {splits.test.shape}")
    return splits
