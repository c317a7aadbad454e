"""Metrics usable by every family: mode coverage, Frechet distance, Inception Score and KID (of any feature
network's outputs), the FID Inception-v3 (weights supplied by the user; :mod:`.inception`), a small MNIST classifier
(trained by the project, no downloaded weights) whose features feed the Frechet distance, and the
standard error of a mean accumulated over evaluation batches."""

from gen_jax.metrics import classifier, inception
from gen_jax.metrics.frechet import feature_statistics, frechet_distance, frechet_distance_from_features
from gen_jax.metrics.kernel import inception_score, kernel_inception_distance, polynomial_mmd2_unbiased
from gen_jax.metrics.modes import mode_coverage
from gen_jax.metrics.stats import standard_error

__all__ = ["classifier", "inception", "feature_statistics", "frechet_distance", "frechet_distance_from_features",
           "inception_score", "kernel_inception_distance", "mode_coverage", "polynomial_mmd2_unbiased",
           "standard_error"]
