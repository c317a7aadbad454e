"""Data: toy 2D distributions with exact densities, and tfds image datasets."""

from gen_jax.data import images, toy
from gen_jax.data.images import IMAGE_DATASETS, DatasetNotFoundError, ImageBatches, load_tfds
from gen_jax.data.preprocess import dynamic_binarize, to_symmetric, to_unit, uniform_dequantize
from gen_jax.data.toy import GaussianMixture, ToyDistribution, get_toy, TOY_DATASETS

__all__ = [
    "images", "toy", "DatasetNotFoundError", "ImageBatches", "dynamic_binarize", "load_tfds",
    "to_symmetric", "to_unit", "uniform_dequantize", "GaussianMixture", "ToyDistribution", "get_toy",
    "TOY_DATASETS", "IMAGE_DATASETS",
]
