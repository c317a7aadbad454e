"""The tfds-backed source: a split of a prepared tfds dataset, read at random through ``tfds.data_source``."""

from __future__ import annotations

import hashlib
import os

import numpy as np

from gen_jax.data.images import DatasetNotFoundError, check_images
from gen_jax.data.sources.base import DataError, Source, _sha256_files


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
