"""Metrics usable by every family: mode coverage, Frechet distance, a small MNIST classifier
(trained by the project, no downloaded weights) whose features feed the Frechet distance, and the
standard error of a mean accumulated over evaluation batches."""

from gen_jax.metrics import classifier
from gen_jax.metrics.frechet import feature_statistics, frechet_distance, frechet_distance_from_features
from gen_jax.metrics.modes import mode_coverage
from gen_jax.metrics.stats import standard_error

__all__ = ["classifier", "feature_statistics", "frechet_distance", "frechet_distance_from_features",
           "mode_coverage", "standard_error"]
