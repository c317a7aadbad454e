"""Inception Score and KID (gen_jax.metrics.kernel): the estimator against its definition summed term by term,
unbiasedness (mean over independent draws of one distribution is 0; of two Gaussians, the closed-form population
MMD^2 of the cubic kernel), and the Inception Score's limits."""

import itertools
import math

import numpy as np
import pytest

from gen_jax import metrics


def _kernel(a, b):
    return (a @ b / len(a) + 1.0) ** 3


def test_mmd2_estimator_is_the_definition_term_by_term():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(0.5, 1.2, size=(5, 3))
    m, n = len(x), len(y)
    kxx = sum(_kernel(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    kyy = sum(_kernel(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    kxy = sum(_kernel(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    assert metrics.polynomial_mmd2_unbiased(x, y) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-12)


def _expected_kernel(mu1, s1, mu2, s2):
    """E (x.y / d + 1)^3 for independent x ~ N(mu1, s1), y ~ N(mu2, s2): by the moments of x.y (float64)."""
    d = len(mu1)

    def moments(mu, s):
        second = s + np.outer(mu, mu)
        third = (np.einsum("i,j,k->ijk", mu, mu, mu) + np.einsum("i,jk->ijk", mu, s) + np.einsum("j,ik->ijk", mu, s)
                 + np.einsum("k,ij->ijk", mu, s))
        return second, third

    (m2x, m3x), (m2y, m3y) = moments(mu1, s1), moments(mu2, s2)
    e1 = mu1 @ mu2 / d
    e2 = np.sum(m2x * m2y) / d ** 2
    e3 = np.sum(m3x * m3y) / d ** 3
    return 1.0 + 3.0 * e1 + 3.0 * e2 + e3


def test_mmd2_is_unbiased_for_the_population_value_of_gaussian_features():
    rng = np.random.default_rng(1)
    d = 3
    mu1, mu2 = np.zeros(d), np.array([0.4, -0.2, 0.1])
    a = rng.normal(size=(d, d)) * 0.4
    s1, s2 = np.eye(d), np.eye(d) + a @ a.T
    population = (_expected_kernel(mu1, s1, mu1, s1) + _expected_kernel(mu2, s2, mu2, s2)
                  - 2.0 * _expected_kernel(mu1, s1, mu2, s2))
    assert population > 0.05
    draws = 400
    same, diff = [], []
    for _ in range(draws):  # subsets of 20: a biased (V-statistic) estimate would be off by ~E k(x, x) / 10
        x = rng.multivariate_normal(mu1, s1, size=20)
        same.append(metrics.polynomial_mmd2_unbiased(x, rng.multivariate_normal(mu1, s1, size=20)))
        diff.append(metrics.polynomial_mmd2_unbiased(x, rng.multivariate_normal(mu2, s2, size=20)))
    for values, expected in ((same, 0.0), (diff, population)):
        mean, se = np.mean(values), np.std(values, ddof=1) / math.sqrt(draws)
        assert abs(mean - expected) < 4 * se, (mean, expected, se)
    assert np.std(same, ddof=1) / math.sqrt(draws) < population / 5  # the test can tell the two apart


def test_kid_over_subsets():
    rng = np.random.default_rng(2)
    f, g = rng.normal(size=(2, 300, 4))
    mean, std = metrics.kernel_inception_distance(f, g, num_subsets=20, subset_size=100)
    assert std > 0 and abs(mean) < std  # two samples of one distribution: MMD^2 ~ 0 within a subset's spread
    far, far_std = metrics.kernel_inception_distance(f, g + 1.0, num_subsets=5, subset_size=1000)  # capped at 300
    assert far > 10 * std and far_std < 1e-9 * far  # every subset is the whole set (permuted)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        metrics.kernel_inception_distance(f, f[:, :3])
    with pytest.raises(ValueError, match="NaN or Inf"):
        metrics.kernel_inception_distance(np.full((4, 2), np.nan), f[:, :2])


def test_inception_score_limits_and_splits():
    k = 10
    confident = np.eye(k)[np.arange(1000) % k]  # one-hot, every class equally often
    assert metrics.inception_score(confident, num_splits=10)[0] == pytest.approx(k, rel=1e-9)
    undecided = np.full((1000, k), 1.0 / k)
    assert metrics.inception_score(undecided)[0] == pytest.approx(1.0, rel=1e-12)
    logits = np.random.default_rng(3).normal(size=(500, k)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    p_y = probs.mean(0)
    by_hand = math.exp(np.mean(np.sum(probs * np.log(probs / p_y), axis=1)))
    assert metrics.inception_score(logits, num_splits=1, from_logits=True)[0] == pytest.approx(by_hand, rel=1e-9)
    mean, std = metrics.inception_score(probs, num_splits=5)
    assert std > 0 and 1.0 < mean < k
    with pytest.raises(ValueError, match="from_logits=True"):
        metrics.inception_score(logits)
    with pytest.raises(ValueError, match="num_splits"):
        metrics.inception_score(probs, num_splits=0)
