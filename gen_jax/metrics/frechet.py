"""Frechet distance between Gaussians fitted to feature sets (the FID formula, Heusel et al. 2017).

For ``N(mu1, S1)`` and ``N(mu2, S2)``::

    d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})

which is the squared 2-Wasserstein distance between the two Gaussians. ``tr((S1 S2)^{1/2})`` is
computed as ``tr((S1^{1/2} S2 S1^{1/2})^{1/2})``: both matrix square roots are of symmetric PSD
matrices and are taken by ``numpy.linalg.eigh`` in float64 (no scipy), with tiny negative
eigenvalues from round-off clipped to 0.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root ``V diag(sqrt(max(w, 0))) V^T`` of ``a``."""
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _as_stats(mu: ArrayLike, sigma: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: expected mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"{name}: statistics contain NaN or Inf")
    return mu, sigma


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Squared Frechet (2-Wasserstein) distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1^{1/2} sigma2 sigma1^{1/2})^{1/2})``.

    Args:
      mu1, mu2: ``[D]`` means.
      sigma1, sigma2: ``[D, D]`` symmetric PSD covariances.

    Returns:
      The distance as a python float (>= 0 up to round-off; clipped at 0).
    """
    mu1, sigma1 = _as_stats(mu1, sigma1, "first Gaussian")
    mu2, sigma2 = _as_stats(mu2, sigma2, "second Gaussian")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    root1 = _sqrtm_psd(sigma1)
    cross = root1 @ sigma2 @ root1  # S1^{1/2} S2 S1^{1/2}, symmetric PSD
    w = np.linalg.eigvalsh(0.5 * (cross + cross.T))
    tr_sqrt = float(np.sum(np.sqrt(np.clip(w, 0.0, None))))
    diff = mu1 - mu2
    d2 = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_sqrt)
    return max(d2, 0.0)


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of features ``[N, D]``, ``N >= 2``."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape [N >= 2, D], got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance_from_features(features1: ArrayLike, features2: ArrayLike) -> float:
    """Frechet distance between Gaussians fitted (mean, unbiased covariance) to two feature sets."""
    mu1, sigma1 = feature_statistics(features1)
    mu2, sigma2 = feature_statistics(features2)
    return frechet_distance(mu1, sigma1, mu2, sigma2)
