"""File-backed sources: a .npy file read by rows, a .npz, a folder of image files (and their splits)."""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np

from gen_jax.data.sources.base import (ArraySource, DataError, Source, Splits, _holdout, _kind_of, _num_classes,
                                       _sha256_files)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class NpySource(Source):
    """A ``.npy`` file read row by row with ``os.pread``: memory holds only the rows of a read."""

    def __init__(self, path: str, labels=None, name: str | None = None):
        self.path, self.name = path, name or path
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(f)
                self._offset = f.tell()
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable .npy file ({e})") from None
        if fortran or dtype.hasobject:
            raise DataError(f"{path}: a Fortran-ordered or object array cannot be read by rows; save it with "
                            f"np.save(path, np.ascontiguousarray(x))")
        if dtype == np.uint8 and len(shape) == 3:  # grayscale images without a channel axis
            shape = (*shape, 1)
        self.kind = _kind_of(dtype, shape, path)
        self.dtype, self.shape = dtype, tuple(shape[1:])
        self._n, self._row_bytes = shape[0], int(np.prod(shape[1:])) * dtype.itemsize
        expected = self._offset + self._n * self._row_bytes
        if os.path.getsize(path) < expected:
            raise DataError(f"{path}: truncated ({os.path.getsize(path)} bytes, the header says {expected})")
        if self.kind == "image" and self.shape[-1] not in (1, 3, 4):
            raise DataError(f"{path}: expected channels last [N, H, W, C] with C in (1, 3, 4), got "
                            f"{(self._n, *self.shape)} (channels first? np.moveaxis(x, 1, -1))")
        self.labels = (np.zeros(self._n, np.int32) if labels is None else np.asarray(labels, np.int32))
        if self.labels.shape != (self._n,):
            raise DataError(f"{path}: {self._n} examples but labels of shape {self.labels.shape}")
        self.num_classes = _num_classes(labels is not None, self.labels)
        self._fd = None

    def __len__(self) -> int:
        return self._n

    def __getstate__(self):  # worker processes open their own descriptor
        return {**self.__dict__, "_fd": None}

    def read(self, rows):
        rows = np.asarray(rows, np.int64)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        out = np.empty((len(rows), *self.shape), self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        for j, r in enumerate(rows):
            flat[j] = np.frombuffer(os.pread(self._fd, self._row_bytes, self._offset + int(r) * self._row_bytes),
                                    np.uint8)
        x = out if self.kind == "image" else out.astype(np.float32, copy=False)
        return {"x": x, "label": self.labels[rows]}

    def _digest(self) -> str:
        return _sha256_files([self.path])


class FolderSource(Source):
    """Image files; ``labels`` from the class sub-folders. Sizes and modes are read from the headers at
    construction (mixed sizes are refused unless the images will be resized)."""

    def __init__(self, files: Sequence[str], labels: Sequence[int] | None, root: str, *, allow_mixed_sizes=False,
                 name: str | None = None):
        from PIL import Image

        if not files:
            raise DataError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
        self.files, self.root, self.name = list(files), root, name or root
        self.mixed_sizes = allow_mixed_sizes
        self.labels = np.zeros(len(self.files), np.int32) if labels is None else np.asarray(labels, np.int32)
        sizes, gray = {}, True
        for f in self.files:
            try:
                with Image.open(f) as im:
                    sizes.setdefault(im.size, f)
                    gray = gray and im.mode in ("1", "L", "I;16", "I", "F")
            except (OSError, ValueError) as e:
                raise DataError(f"{f}: cannot read this image ({e})") from None
        if len(sizes) > 1 and not allow_mixed_sizes:
            (s1, f1), (s2, f2) = list(sizes.items())[:2]
            raise DataError(f"{root}: images of different sizes ({f1} is {s1[0]}x{s1[1]}, {f2} is {s2[0]}x{s2[1]}); "
                            f"resize them all to one size with data.image_size")
        self.mode = "L" if gray else "RGB"
        (w, h), = list(sizes)[:1]
        self.kind, self.shape = "image", (h, w, 1 if gray else 3)
        self.num_classes = _num_classes(labels is not None, self.labels)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                x = np.asarray(im.convert(self.mode), np.uint8)
        except (OSError, ValueError) as e:
            raise DataError(f"{self.files[i]}: cannot read this image ({e})") from None
        return x[..., None] if x.ndim == 2 else x

    def read(self, rows):
        rows = np.asarray(rows)
        xs = [self.load(int(i)) for i in rows]
        if self.mixed_sizes:  # a list, for Resized
            return {"x": xs, "label": self.labels[rows]}
        for i, x in zip(rows, xs):
            if x.shape != self.shape:
                raise DataError(f"{self.files[i]}: {x.shape[1]}x{x.shape[0]} pixels, the other images are "
                                f"{self.shape[1]}x{self.shape[0]}; resize them all with data.image_size")
        return {"x": np.stack(xs) if xs else np.zeros((0, *self.shape), np.uint8), "label": self.labels[rows]}

    def _digest(self) -> str:
        return _sha256_files(self.files, self.root)


_X_KEYS, _Y_KEYS = ("x", "images", "image", "arr_0"), ("y", "label", "labels")


def _array_splits(path: str, holdout: float) -> Splits:
    if path.endswith(".npy"):
        return _holdout(NpySource(path), holdout)
    if not path.endswith(".npz"):
        raise DataError(f"{path}: expected a .npy or .npz file, or a folder of images")
    try:
        z = np.load(path, allow_pickle=False)
        keys = set(z.files)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    digest = _sha256_files([path])

    def source(x_key, y_keys, what):
        y_key = next((k for k in y_keys if k in keys), None)
        x = z[x_key]
        if x.dtype == np.uint8 and x.ndim == 3:
            x = x[..., None]
        return ArraySource(x, None if y_key is None else z[y_key], name=f"{path}[{x_key}]",
                           digest=hashlib.sha256(f"{digest}:{what}".encode()).hexdigest())

    if {"x_train", "x_test"} <= keys:
        return Splits(source("x_train", ("y_train", "label_train"), "train"),
                      source("x_test", ("y_test", "label_test"), "test"))
    x_key = next((k for k in _X_KEYS if k in keys), None)
    if x_key is None:
        raise DataError(f"{path}: no array named {' / '.join(_X_KEYS)} (or x_train and x_test); it has "
                        f"{sorted(keys)}")
    return _holdout(source(x_key, _Y_KEYS, "all"), holdout)


def _folder_splits(root: str, allow_mixed_sizes: bool, holdout: float) -> Splits:
    subdirs = {d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))}
    if {"train", "test"} <= subdirs:
        train_files, train_labels, classes = _image_files(os.path.join(root, "train"))
        test_files, test_labels, test_classes = _image_files(os.path.join(root, "test"), classes)
        return Splits(FolderSource(train_files, train_labels, root, allow_mixed_sizes=allow_mixed_sizes,
                                   name=os.path.join(root, "train")),
                      FolderSource(test_files, test_labels, root, allow_mixed_sizes=allow_mixed_sizes,
                                   name=os.path.join(root, "test")))
    files, labels, _ = _image_files(root)
    return _holdout(FolderSource(files, labels, root, allow_mixed_sizes=allow_mixed_sizes), holdout)


def _image_files(folder: str, classes: list[str] | None = None) -> tuple[list[str], list[int] | None, list[str]]:
    """The image files under ``folder`` and their labels: one class per sub-folder (sorted names), or all
    None (unlabelled) when the images lie in ``folder`` itself. ``classes`` fixes the class names (the test split
    uses the train split's)."""
    entries = sorted(os.listdir(folder))
    dirs = [e for e in entries if os.path.isdir(os.path.join(folder, e))]
    images = [os.path.join(folder, e) for e in entries if e.lower().endswith(IMAGE_SUFFIXES)]
    if images or not dirs:
        if not images:
            raise DataError(f"{folder}: empty: no image files ({', '.join(IMAGE_SUFFIXES)}) and no class folders")
        return images, None, classes or []
    classes = classes or dirs
    unknown = sorted(set(dirs) - set(classes))
    if unknown:
        raise DataError(f"{folder}: class folders {unknown} are not among the train split's {classes}")
    files, labels = [], []
    for label, d in enumerate(classes):
        sub = os.path.join(folder, d)
        if not os.path.isdir(sub):
            continue
        found = [os.path.join(sub, e) for e in sorted(os.listdir(sub)) if e.lower().endswith(IMAGE_SUFFIXES)]
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"{folder}: the class folders {classes} hold no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files, labels, classes

