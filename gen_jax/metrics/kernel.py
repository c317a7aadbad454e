"""Sample-quality scores from classifier outputs and features, besides the Frechet distance
(:mod:`gen_jax.metrics.frechet`): the Inception Score (Salimans et al. 2016) and the Kernel Inception Distance
(Binkowski et al. 2018). Both take what a feature network gives (class probabilities or logits; pool features),
so they serve the project's small classifier and an Inception-v3 alike.

* Inception Score: ``exp(E_x KL(p(y|x) || p(y)))`` with p(y) the mean of p(y|x) over the set, computed on
  ``num_splits`` equal splits of the set and reported as the mean and standard deviation over them (the
  published protocol: 10 splits of 50,000 samples).
* KID: the squared maximum mean discrepancy with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 between
  the two feature sets, by its unbiased estimator

      MMD^2_u = 1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j) - 2/(mn) sum_{i,j} k(x_i, y_j)

  averaged over ``num_subsets`` random subsets of ``subset_size`` from each set (the published protocol: 100
  subsets of 1000), with the standard deviation over the subsets. Unbiased: its expectation is the population
  MMD^2, 0 for two samples of one distribution, so it can be slightly negative.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["inception_score", "kernel_inception_distance", "polynomial_mmd2_unbiased"]


def inception_score(probs: ArrayLike, num_splits: int = 10, *, from_logits: bool = False) -> tuple[float, float]:
    """``(mean, std)`` over ``num_splits`` splits of ``exp(E_x KL(p(y|x) || p(y)))`` of class probabilities
    (or logits, ``from_logits``) ``[N, K]``."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[0] < 1:
        raise ValueError(f"inception_score expects probabilities [N, K]; got shape {p.shape}")
    if not isinstance(num_splits, int) or not 1 <= num_splits <= p.shape[0]:
        raise ValueError(f"num_splits must be an int in [1, N = {p.shape[0]}]; got {num_splits!r}")
    if from_logits:
        p = np.exp(p - p.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
    elif np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("inception_score expects rows of probabilities (non-negative, summing to 1); pass "
                         "from_logits=True for logits")
    scores = []
    for part in np.array_split(p, num_splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = np.sum(part * (np.log(np.clip(part, 1e-30, None)) - np.log(np.clip(marginal, 1e-30, None))), axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


def _check_features(f: ArrayLike, name: str) -> np.ndarray:
    f = np.asarray(f, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"{name}: features must have shape [N >= 2, D]; got {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{name}: features contain NaN or Inf")
    return f


def polynomial_mmd2_unbiased(x: ArrayLike, y: ArrayLike) -> float:
    """The unbiased MMD^2 estimate of the module docstring between feature sets ``x`` [m, D] and ``y`` [n, D]."""
    return _mmd2(*_check_pair(x, y))


def _check_pair(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = _check_features(x, "first set"), _check_features(y, "second set")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    return x, y


def _mmd2(x: np.ndarray, y: np.ndarray) -> float:  # checked float64 features
    d, m, n = x.shape[1], x.shape[0], y.shape[0]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kernel_inception_distance(features1: ArrayLike, features2: ArrayLike, *, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """``(mean, std)`` of :func:`polynomial_mmd2_unbiased` over ``num_subsets`` subsets of ``subset_size``
    (capped at the smaller set's size) drawn without replacement from each set (``seed``)."""
    f1, f2 = _check_pair(features1, features2)  # once, not per subset
    if not isinstance(num_subsets, int) or num_subsets < 1:
        raise ValueError(f"num_subsets must be a positive int; got {num_subsets!r}")
    size = min(int(subset_size), f1.shape[0], f2.shape[0])
    if size < 2:
        raise ValueError(f"subset_size must be >= 2; got {subset_size!r}")
    rng = np.random.default_rng(seed)
    values = [_mmd2(f1[rng.choice(f1.shape[0], size, replace=False)],
                    f2[rng.choice(f2.shape[0], size, replace=False)])
              for _ in range(num_subsets)]
    return float(np.mean(values)), float(np.std(values))
