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
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Sequence

import numpy as np

from gen_jax.data.images import DatasetNotFoundError, check_images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_CHUNK = 1 << 22  # bytes hashed per read


class DataError(ValueError):
    """The data cannot be used as given; the message names the file and the problem."""


def _sha256_files(paths: Sequence[str], root: str | None = None) -> str:
    h = hashlib.sha256()
    for p in paths:
        if root is not None:
            h.update(os.path.relpath(p, root).encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


class Source:
    """Base class: subclasses set ``kind``, ``shape``, ``num_classes``, ``name`` and define ``__len__``,
    ``read`` and ``_digest``."""

    kind: str
    shape: tuple[int, ...]
    num_classes: int = 0
    name: str = "data"

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _digest(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.name}: index {i} out of range for {len(self)} examples")
        b = self.read(np.asarray([i % len(self)]))
        return {"x": b["x"][0], "label": int(b["label"][0])}

    def read_all(self, chunk: int = 4096) -> dict[str, np.ndarray]:
        """Every example at once (small data, evaluation)."""
        parts = [self.read(np.arange(s, min(len(self), s + chunk))) for s in range(0, len(self), chunk)]
        return {k: np.concatenate([p[k] for p in parts]) for k in ("x", "label")}

    def fingerprint(self) -> dict:
        """``{'name', 'examples', 'shape', 'sha256'}``: the hash covers the bytes this source reads (the
        files behind it, or the arrays it holds) and how it reads them (split, resizing)."""
        return {"name": self.name, "examples": len(self), "shape": list(self.shape), "sha256": self._digest()}


class ArraySource(Source):
    """Examples in arrays: uint8 images [N, H, W, C] or float points [N, D] (``labels`` optional)."""

    def __init__(self, x, labels=None, name: str = "arrays", digest: str | None = None):
        x = np.asarray(x) if not isinstance(x, np.ndarray) else x
        labels_given = labels is not None
        labels = np.zeros(len(x), np.int32) if labels is None else np.asarray(labels)
        self.kind = _kind_of(x.dtype, x.shape, name)
        if self.kind == "image":
            check_images(x, labels, name)
        else:
            x = x.astype(np.float32, copy=False)
            if labels.shape != (len(x),):
                raise DataError(f"{name}: expected labels of shape ({len(x)},), got {labels.shape}")
        self.x, self.labels = x, labels.astype(np.int32, copy=False)
        self.shape, self.name, self._given_digest = tuple(x.shape[1:]), name, digest
        self.num_classes = _num_classes(labels_given, self.labels)

    def __len__(self) -> int:
        return len(self.x)

    def read(self, rows):
        rows = np.asarray(rows)
        return {"x": self.x[rows], "label": self.labels[rows]}

    def _digest(self) -> str:
        if self._given_digest:
            return self._given_digest
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.x).data)
        h.update(np.ascontiguousarray(self.labels).data)
        return h.hexdigest()


def _num_classes(labelled: bool, labels: np.ndarray) -> int:
    """0 for unlabelled data, else the largest label + 1."""
    return int(labels.max()) + 1 if labelled and len(labels) else 0


def _kind_of(dtype, shape, what: str) -> str:
    if dtype == np.uint8 and len(shape) == 4:
        return "image"
    if np.issubdtype(dtype, np.floating) and len(shape) == 2:
        return "points"
    hint = (" (floats in [0, 1]? images must be uint8: np.round(x * 255).astype(np.uint8))"
            if np.issubdtype(dtype, np.floating) and len(shape) in (3, 4) else "")
    raise DataError(f"{what}: expected uint8 images [N, H, W, C] (or [N, H, W]) or float points [N, D]; "
                    f"got {dtype} {tuple(shape)}{hint}")


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


class TfdsSource(Source):
    """A split of a prepared tfds dataset (``tfds.data_source``; array_record), images under ``'image'``
    and the label, if the dataset has one, under ``'label'``."""

    def __init__(self, name: str, split: str, data_dir: str | None = None):
        import tensorflow_datasets as tfds  # imported lazily: toy-only runs never pay for it

        self.name, self.split, self.data_dir = name, split, data_dir
        self._source = _tfds_data_source(name, split, data_dir)
        features = self._source.dataset_info.features
        if "image" not in features:
            raise DataError(f"tfds dataset {name!r} has no 'image' feature (it has {sorted(features)}); "
                            f"gen_jax reads image datasets from tfds")
        label = features["label"] if "label" in features else None
        self.num_classes = int(label.num_classes) if isinstance(label, tfds.features.ClassLabel) else 0
        self.kind = "image"
        shape = tuple(features["image"].shape)
        self.variable_size = None in shape
        self.shape = tuple(self[0]["x"].shape) if self.variable_size and len(self) else shape

    def __len__(self) -> int:
        return len(self._source)

    def read(self, rows):
        idx = [int(i) for i in rows]
        try:
            records = self._source.__getitems__(idx)  # one batched read
        except TypeError:  # tfds.testing.mock_data's source has no batched read
            records = [self._source[i] for i in idx]
        xs = [np.asarray(r["image"], np.uint8) for r in records]
        labels = np.asarray([int(r.get("label", 0)) for r in records], np.int32)
        if self.variable_size:  # images of varying sizes: a list, for Resized
            return {"x": xs, "label": labels}
        return {"x": np.stack(xs) if xs else np.zeros((0, *self.shape), np.uint8), "label": labels}

    def _digest(self) -> str:
        info = self._source.dataset_info
        base = self.split.split("[")[0]
        paths = [os.fspath(p) for p in getattr(info.splits[base], "filepaths", [])] if info.splits else []
        h = hashlib.sha256(f"{info.full_name}:{self.split}\0".encode())
        if paths and all(os.path.exists(p) for p in paths):
            h.update(_sha256_files(paths).encode())
        else:  # tfds.testing.mock_data: no files, hash the records
            for k in range(0, len(self), 4096):
                b = self.read(np.arange(k, min(len(self), k + 4096)))
                for v in (b["x"], b["label"]):
                    h.update(np.ascontiguousarray(v).data if isinstance(v, np.ndarray) else repr(v).encode())
        return h.hexdigest()


def load_tfds(name: str, split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A prepared tfds image split read whole into memory: ``(images uint8 [N, H, W, C], labels int32 [N])``.

    Raises:
      DatasetNotFoundError: the dataset is not prepared in ``data_dir`` (tfds's default if ``None``),
        with instructions to prepare it.
    """
    b = TfdsSource(name, split, data_dir).read_all()
    check_images(b["x"], b["label"], f"tfds {name!r} ({split})")
    return b["x"], b["label"]


def _tfds_data_source(name: str, split: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except (tfds.core.registered.DatasetNotFoundError, AssertionError, FileNotFoundError,
            NotImplementedError) as e:  # tfds reports an unprepared folder in several ways
        if isinstance(e, tfds.core.registered.DatasetNotFoundError) and name.split("/")[0] not in tfds.list_builders(with_community_datasets=False):
            import difflib

            close = difflib.get_close_matches(name, tfds.list_builders(with_community_datasets=False), n=3)
            raise DataError(f"{name!r} is not a tfds dataset, a .npy/.npz file or a folder"
                            + (f"; did you mean {', '.join(close)}?" if close else "")) from None
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
    except ValueError as e:  # an unknown split
        raise DataError(f"tfds dataset {name!r}: {e}") from None


def _prepared_format(name: str, data_dir: str | None) -> str | None:
    """The file format of a prepared copy of ``name`` in ``data_dir`` (from its dataset_info.json)."""
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


class Subset(Source):
    """The examples ``rows`` of ``parent``."""

    def __init__(self, parent: Source, rows: np.ndarray, what: str):
        self.parent, self.rows, self.what = parent, np.asarray(rows, np.int64), what
        self.kind, self.shape, self.num_classes = parent.kind, parent.shape, parent.num_classes
        self.name = f"{parent.name} ({what})"

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, rows):
        return self.parent.read(self.rows[np.asarray(rows, np.int64)])

    def _digest(self) -> str:
        return hashlib.sha256(f"{self.parent._digest()}:{self.what}".encode()).hexdigest()


class Resized(Source):
    """Images center-cropped to a square and resized to ``size`` x ``size`` (PIL, antialiased)."""

    def __init__(self, parent: Source, size: int):
        if parent.kind != "image":
            raise DataError(f"{parent.name}: data.image_size applies to images, these are {parent.kind}")
        self.parent, self.size, self.name = parent, int(size), parent.name
        self.kind, self.num_classes = "image", parent.num_classes
        self.shape = (self.size, self.size, parent.shape[-1])

    def __len__(self) -> int:
        return len(self.parent)

    def read(self, rows):
        b = self.parent.read(rows)
        return {"x": np.stack([center_crop_resize(x, self.size) for x in b["x"]]) if len(rows) else
                np.zeros((0, *self.shape), np.uint8), "label": b["label"]}

    def _digest(self) -> str:
        return hashlib.sha256(f"{self.parent._digest()}:resized {self.size}".encode()).hexdigest()


def center_crop_resize(x: np.ndarray, size: int) -> np.ndarray:
    """The largest centered square of ``x`` [H, W, C] (uint8), resized to [size, size, C]."""
    from PIL import Image

    h, w = x.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = x[top:top + s, left:left + s]
    if s == size:
        return x
    im = Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x)
    out = np.asarray(im.resize((size, size), Image.Resampling.BICUBIC), np.uint8)
    return out[..., None] if out.ndim == 2 else out


@dataclasses.dataclass(frozen=True)
class Splits:
    """The train and test sources of one dataset."""

    train: Source
    test: Source


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


def _holdout(source: Source, holdout: float) -> Splits:
    if not 0 < holdout < 1:
        raise DataError(f"{source.name}: has no test split and data.holdout = {holdout} is not in (0, 1)")
    n = len(source)
    k = max(1, int(round(n * holdout)))
    if n - k < 1:
        raise DataError(f"{source.name}: {n} example(s) cannot be split into train and test")
    order = np.random.default_rng(0).permutation(n)
    return Splits(Subset(source, np.sort(order[:n - k]), f"train: all but a {holdout:g} holdout"),
                  Subset(source, np.sort(order[n - k:]), f"test: a {holdout:g} holdout"))


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

