"""Data: toy 2D distributions with exact densities; sources of examples (tfds, .npy/.npz, image folders)
and the batches streamed from them."""

from gen_jax.data import images, pipeline, sources, toy
from gen_jax.data.images import IMAGE_DATASETS, DatasetNotFoundError, check_images
from gen_jax.data.pipeline import Batches
from gen_jax.data.preprocess import dynamic_binarize, to_symmetric, to_unit, uniform_dequantize
from gen_jax.data.sources import (ArraySource, DataError, FolderSource, NpySource, Source, Splits, TfdsSource,
                                  load_tfds, open_source)
from gen_jax.data.toy import GaussianMixture, ToyDistribution, get_toy, TOY_DATASETS

__all__ = [
    "images", "pipeline", "sources", "toy", "ArraySource", "Batches", "DataError", "DatasetNotFoundError",
    "FolderSource", "NpySource", "Source", "Splits", "TfdsSource", "check_images", "dynamic_binarize",
    "load_tfds", "open_source", "to_symmetric", "to_unit", "uniform_dequantize", "GaussianMixture",
    "ToyDistribution", "get_toy", "TOY_DATASETS", "IMAGE_DATASETS",
]
