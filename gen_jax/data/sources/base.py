"""The source contract (:class:`Source`, :class:`DataError`), examples held in arrays (:class:`ArraySource`), the
wrappers :class:`Subset` and :class:`Resized`, :class:`Splits`, and the helpers every backend shares."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Sequence

import numpy as np

from gen_jax.data.images import check_images

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
