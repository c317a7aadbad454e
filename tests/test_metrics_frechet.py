"""Frechet distance against closed forms and an independent eigenvalue route; the project's
classifier learns and its features separate classes."""

import jax
import numpy as np
import pytest

from gen_jax.metrics import classifier
from gen_jax.metrics.frechet import feature_statistics, frechet_distance, frechet_distance_from_features


def _random_cov(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d + (0.0 if rank else 0.1) * np.eye(d)


def test_one_dimensional_and_diagonal_closed_forms():
    # 1D: W2^2(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 + (s1 - s2)^2.
    np.testing.assert_allclose(frechet_distance([1.0], [[4.0]], [-0.5], [[0.25]]), 1.5**2 + 1.5**2, rtol=1e-12)
    # Commuting (diagonal) covariances: ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expected, rtol=1e-10)


def test_general_case_matches_eigenvalues_of_the_product():
    """tr((S1 S2)^{1/2}) = sum sqrt(eig(S1 S2)) (the eigenvalues of S1 S2 are real and >= 0), computed
    here with the non-symmetric eigensolver, independently of the implementation's eigh route."""
    rng = np.random.default_rng(1)
    for d, rank in [(5, None), (16, None), (8, 3)]:
        s1, s2 = _random_cov(rng, d, rank), _random_cov(rng, d)
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        eig = np.linalg.eigvals(s1 @ s2)
        assert np.max(np.abs(eig.imag)) < 1e-8
        tr_sqrt = np.sum(np.sqrt(np.clip(eig.real, 0, None)))
        expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
        np.testing.assert_allclose(frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-8, atol=1e-10)


def test_zero_for_identical_and_symmetric():
    rng = np.random.default_rng(2)
    s1, s2 = _random_cov(rng, 10), _random_cov(rng, 10, rank=4)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mu2, s2, mu2, s2) == pytest.approx(0.0, abs=1e-7)
    np.testing.assert_allclose(frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1), rtol=1e-8)
    feats = rng.normal(size=(200, 10))
    assert frechet_distance_from_features(feats, feats.copy()) == pytest.approx(0.0, abs=1e-9)


def test_from_features_uses_mean_and_unbiased_covariance():
    rng = np.random.default_rng(3)
    f1 = rng.normal(size=(500, 4))
    f2 = 0.5 + 2.0 * rng.normal(size=(400, 4))
    mu, sigma = feature_statistics(f1)
    np.testing.assert_allclose(mu, f1.mean(0))
    np.testing.assert_allclose(sigma, (f1 - f1.mean(0)).T @ (f1 - f1.mean(0)) / 499)
    # Large samples from N(0, I) and N(0.5, 4 I): d^2 -> 4 * 0.25 + 4 * (1 - 2)^2 = 5.
    np.testing.assert_allclose(frechet_distance_from_features(f1, f2), 5.0, rtol=0.15)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def _bar_images(seed, n):
    """Synthetic 12x12 'digits' (small to keep the test fast; the classifier takes any H x W): class c
    is a bright horizontal bar at rows 4c .. 4c+2, plus uniform noise. Built in numpy."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    rows = np.arange(12)[None, :, None, None]  # [1, 12, 1, 1]
    start = 4 * labels[:, None, None, None]  # [n, 1, 1, 1]
    bar = ((rows >= start) & (rows < start + 3)).astype(np.float32)
    x = np.clip(0.7 * np.broadcast_to(bar, (n, 12, 12, 1)) + 0.3 * rng.uniform(size=(n, 12, 12, 1)), 0.0, 1.0)
    return (255 * x).astype(np.uint8), labels


def test_classifier_learns_and_features_separate_classes():
    images, labels = _bar_images(0, 512)
    params = classifier.train_classifier(images, labels, key=jax.random.key(1), num_classes=3,
                                         num_steps=60, batch_size=32)
    test_images, test_labels = _bar_images(2, 300)
    assert classifier.accuracy(params, test_images, test_labels) > 0.95
    feats = classifier.features(params, test_images, batch_size=128)
    assert feats.shape == (300, 128)
    labels = np.asarray(test_labels)
    same = frechet_distance_from_features(feats[labels == 0][:40], feats[labels == 0][40:])
    different = frechet_distance_from_features(feats[labels == 0], feats[labels == 1])
    assert different > 3 * same


def test_a_saved_classifier_round_trips_and_is_refused_for_another_dataset(tmp_path):
    images, labels = _bar_images(0, 256)
    params = classifier.train_classifier(images, labels, key=jax.random.key(1), num_classes=3, num_steps=5,
                                         batch_size=32)
    path = classifier.save_classifier(str(tmp_path / "clf.msgpack"), params, dataset="bars", steps=5)
    loaded = classifier.load_classifier(path, dataset="bars", num_classes=3, image_shape=(12, 12, 1))
    np.testing.assert_array_equal(classifier.logits(loaded, images[:8]), classifier.logits(params, images[:8]))
    with pytest.raises(ValueError, match="was trained on 'bars', but this run evaluates 'mnist'"):
        classifier.load_classifier(path, dataset="mnist", num_classes=3, image_shape=(12, 12, 1))
    with pytest.raises(ValueError, match="another architecture"):
        classifier.load_classifier(path, dataset="bars", num_classes=10, image_shape=(12, 12, 1))
    from flax import serialization  # a file of bare parameters, as earlier versions wrote it
    (tmp_path / "old.msgpack").write_bytes(serialization.to_bytes(jax.device_get(params)))
    with pytest.raises(ValueError, match="does not say which dataset"):
        classifier.load_classifier(str(tmp_path / "old.msgpack"), dataset="bars", num_classes=3,
                                   image_shape=(12, 12, 1))
