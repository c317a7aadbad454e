"""Data: toy densities integrate to 1 and match their samplers; tfds path under mock data;
deterministic, O(1)-resumable order; per-process sharding; clear error for a missing dataset."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from gen_jax.data import ArraySource, Batches, DataError, DatasetNotFoundError, load_tfds, preprocess, toy


def _grid(dist, res):
    lo, hi = dist.bounds
    xs = np.linspace(lo, hi, res)
    pts = np.stack(np.meshgrid(xs, xs, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)
    return pts, (xs[1] - xs[0]) ** 2


# Resolution: the grid spacing must resolve the narrowest mode (ring: std 0.02 over [-3, 3]).
CASES = {"ring8": 1200, "grid25": 800, "eight_gaussians": 300, "checkerboard": 400, "two_moons": 300,
         "swiss_roll": 300}


@pytest.mark.parametrize("name", sorted(CASES))
def test_toy_density_integrates_to_one_and_matches_sampler(name):
    dist = toy.get_toy(name)
    pts, cell = _grid(dist, CASES[name])
    p = np.exp(np.asarray(dist.log_prob(jnp.asarray(pts)), np.float64))
    mass = p.sum() * cell
    assert abs(mass - 1.0) < 1e-2, mass
    # First and second moments under the density (quadrature) vs the sampler (Monte Carlo).
    x = np.asarray(dist.sample(jax.random.key(0), 100_000), np.float64)
    w = p * cell / mass
    for moment in (lambda v: v, lambda v: v**2):
        quad = (w[:, None] * moment(pts.astype(np.float64))).sum(0)
        mc, se = moment(x).mean(0), moment(x).std(0) / np.sqrt(len(x))
        np.testing.assert_array_less(np.abs(quad - mc), 5 * se + 5e-3)


def test_mixture_entropy_closed_form():
    # Well-separated equal modes: H = log K + log(2 pi e std^2).
    dist = toy.ring8()
    expected = np.log(8) + np.log(2 * np.pi * np.e * 0.02**2)
    assert abs(dist.entropy - expected) < 5e-3


def test_toy_configuration_and_errors():
    ring = toy.ring8(num_modes=4, radius=3.0, std=0.1)
    np.testing.assert_allclose(np.linalg.norm(ring.means, axis=1), 3.0)
    assert toy.grid25().means.shape == (25, 2) and set(np.unique(toy.grid25().means)) == {-4, -2, 0, 2, 4}
    with pytest.raises(ValueError, match="unknown toy dataset 'rings'"):
        toy.get_toy("rings")
    with pytest.raises(ValueError, match="std must be > 0"):
        toy.ring8(std=0.0)
    with pytest.raises(ValueError, match="positive definite"):
        toy.GaussianMixture(means=np.zeros((1, 2)), covs=-np.eye(2)[None], weights=np.ones(1))


def test_toy_batches_deterministic_and_resumable():
    b = toy.ToyBatches(toy.ring8(), 32, seed=3)
    it = b(0)
    first = [next(it)["x"] for _ in range(5)]
    np.testing.assert_array_equal(next(b(3))["x"], first[3])
    assert not np.allclose(first[0], first[1])


@pytest.fixture(scope="module")
def mock_mnist():
    with tfds.testing.mock_data(num_examples=40):
        xtr, ytr = load_tfds("mnist", "train")
        xte, yte = load_tfds("mnist", "test")
    return xtr, ytr, xte, yte


def test_tfds_loading_under_mock_data(mock_mnist):
    xtr, ytr, xte, _ = mock_mnist
    assert xtr.shape == (40, 28, 28, 1) and xtr.dtype == np.uint8 and ytr.dtype == np.int32
    assert xte.shape[1:] == (28, 28, 1)


def test_image_order_deterministic_resumable_and_sharded(mock_mnist):
    xtr, ytr, _, _ = mock_mnist
    b = Batches(ArraySource(xtr, ytr), batch_size=8, seed=1)
    assert b.steps_per_epoch == 5
    seq = [next(it) for it in [b(0)] for _ in range(12)]
    # Epoch 0 visits every example once (drop remainder: 40 = 5 * 8).
    seen = np.concatenate([s["x"].reshape(8, -1) for s in seq[:5]])
    assert len({r.tobytes() for r in seen}) == len({r.tobytes() for r in xtr.reshape(40, -1)})
    # O(1) resume: a fresh object started at step 7 gives the same batches.
    again = Batches(ArraySource(xtr, ytr), batch_size=8, seed=1)(7)
    for s in seq[7:]:
        np.testing.assert_array_equal(next(again)["x"], s["x"])
    # Another seed, another order; another epoch, another order.
    other = Batches(ArraySource(xtr, ytr), batch_size=8, seed=2).batch_at(0)
    assert not np.array_equal(other["label"], seq[0]["label"]) or not np.array_equal(other["x"], seq[0]["x"])
    # Two processes read disjoint halves that concatenate to the global batch.
    parts = [Batches(ArraySource(xtr, ytr), 8, seed=1, process_index=p, num_processes=2).batch_at(9)
             for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([p["x"] for p in parts]), seq[9]["x"])


def test_toy_batches_make_no_implicit_transfer():
    batches = toy.ToyBatches(toy.ring8(), 16, seed=3)
    first = batches.batch_at(7)["x"]
    with jax.transfer_guard("disallow"):  # would raise on a Python int turned into a device array
        again = batches.batch_at(7)["x"]
    np.testing.assert_array_equal(first, again)


def test_image_batches_reject_bad_sizes(mock_mnist):
    xtr, ytr, _, _ = mock_mnist
    with pytest.raises(ValueError, match="batch_size must be in \\[1, 40\\]"):
        Batches(ArraySource(xtr, ytr), batch_size=41)
    with pytest.raises(ValueError, match="not divisible by the number of processes 3"):
        Batches(ArraySource(xtr, ytr), batch_size=8, num_processes=3)


def test_array_sources_reject_wrong_dtype_shape_and_labels(mock_mnist):
    xtr, ytr, _, _ = mock_mnist
    with pytest.raises(DataError, match=r"expected uint8 images .*got float32 \(40, 28, 28, 1\) \(floats in \[0, 1\]"):
        ArraySource(xtr.astype(np.float32) / 255.0, ytr)  # wrong dtype and range
    with pytest.raises(DataError, match=r"got uint8 \(40, 28, 28\)"):
        ArraySource(xtr[..., 0], ytr)  # missing channel axis
    with pytest.raises(ValueError, match="channels first"):
        ArraySource(np.moveaxis(xtr, -1, 1), ytr)
    with pytest.raises(ValueError, match=r"labels of shape \(40,\), got int32 \(39,\)"):
        ArraySource(xtr, ytr[:39])
    with pytest.raises(ValueError, match="labels must be >= 0"):
        ArraySource(xtr, ytr - 100)


def test_missing_dataset_says_what_to_do(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="not prepared in .*data_dir"):
        load_tfds("mnist", "train", data_dir=str(tmp_path))


def test_preprocessing(key):
    x = jnp.array([[0, 128, 255]], jnp.uint8)
    np.testing.assert_allclose(preprocess.to_unit(x), [[0, 128 / 255, 1]])
    np.testing.assert_allclose(preprocess.to_symmetric(x), [[-1, 128 / 127.5 - 1, 1]], atol=1e-6)
    y = preprocess.uniform_dequantize(key, jnp.tile(x, (1000, 1)))
    assert np.all((y >= x / 256.0) & (y < (x.astype(np.float32) + 1) / 256.0))
    b = preprocess.dynamic_binarize(key, jnp.full((20000,), 64, jnp.uint8))
    assert set(np.unique(b)) <= {0.0, 1.0} and abs(float(b.mean()) - 64 / 255) < 0.01
