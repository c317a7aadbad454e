"""VAE networks, the engine objective (VariationalAutoencoder.loss), samplers, and that training lowers the loss."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import vae
from gen_jax.train import TrainState, make_optimizer, make_train_step


def test_public_names_importable():
    for name in vae.__all__:
        assert getattr(vae, name) is not None, name


@pytest.mark.parametrize("factory", [vae.mlp_vae, vae.conv_vae,
                                     functools.partial(vae.conv_vae, upsample="subpixel",
                                                       downsample="space_to_depth")])
def test_shapes(factory):
    x = jnp.zeros((3, 8, 8, 1))
    model = factory((8, 8, 1), latent_dim=5, num_params=2, **({"hidden": (16,)} if factory is vae.mlp_vae
                                                               else {"features": (4, 8), "dense": 16}))
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    shape = lambda f, *a: jax.eval_shape(f, *a).shape  # noqa: E731  (traces, no compile)
    mean = shape(lambda p, x: model.apply({"params": p}, x, method="encode")[0], params, x)
    assert mean == (3, 5)
    decoded = shape(lambda p: model.apply({"params": p}, jnp.ones((4, 5)), method="decode"), params)
    assert decoded == (4, 8, 8, 2)
    with pytest.raises(ValueError, match=r"z must have shape \[B, 5\]"):
        shape(lambda p: model.apply({"params": p}, jnp.ones((4, 3)), method="decode"), params)
    lik = "logistic"
    assert shape(lambda p, k: vae.sample_prior(model, p, k, 6, likelihood=lik), params,
                 jax.random.key(1)) == (6, 8, 8, 1)
    assert shape(lambda p: vae.reconstruct(model, p, x, likelihood=lik), params) == x.shape
    assert shape(lambda p: vae.interpolate(model, p, x, x, 4, likelihood=lik), params) == (3, 4, 8, 8, 1)
    grid = shape(lambda p: vae.latent_traversal(model, p, dims=(0, 3), values=jnp.linspace(-2, 2, 5),
                                                likelihood=lik), params)
    assert grid == (2, 5, 8, 8, 1)


def test_samplers_decode_the_right_latents():
    """Interpolation endpoints are the reconstructions; the traversal's centre column is z0's decoding."""
    model = _small_image_model()
    x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 1))
    params = jax.jit(model.init)(jax.random.key(1), x)["params"]

    @jax.jit
    def views(params):
        rec = vae.reconstruct(model, params, x)
        path = vae.interpolate(model, params, x, x[::-1], 3)
        z0 = jnp.array([0.5, -1.0, 2.0])
        grid = vae.latent_traversal(model, params, dims=(1,), values=jnp.array([-1.0, -3.0]), z0=z0)
        direct = vae.decode_mean(model, params, jnp.array([[0.5, -3.0, 2.0]]))
        return rec, path, grid, direct

    rec, path, grid, direct = views(params)
    np.testing.assert_allclose(path[:, 0], rec, rtol=1e-5)
    np.testing.assert_allclose(path[:, -1], rec[::-1], rtol=1e-5)
    np.testing.assert_allclose(grid[0, 1], direct[0], rtol=1e-5)
    assert float(rec.min()) >= 0.0 and float(rec.max()) <= 1.0  # Bernoulli means


def test_conv_decoder_rejects_bad_image_size():
    model = vae.conv_vae((10, 10, 1), latent_dim=2, num_params=1, features=(4, 8), dense=0)
    with pytest.raises(ValueError, match="divisible"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 10, 10, 1)))


def _small_image_model():
    return vae.mlp_vae((4, 4, 1), latent_dim=3, num_params=1, hidden=(32,))


def test_vae_loss_metrics_are_consistent():
    model = _small_image_model()
    x = jax.random.randint(jax.random.key(0), (8, 4, 4, 1), 0, 256).astype(jnp.uint8)
    params = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 4, 4, 1)))["params"]
    rng = jax.random.key(2)

    @jax.jit
    def run(params):
        batch = {"x": x}

        def loss(p, **kw):
            value, (metrics, _) = vae.VariationalAutoencoder(model, **kw).loss(p, {}, batch, rng)
            return value, metrics

        return loss(params), loss(params, beta=4.0), loss(params, iwae_k=8, kl="mc"), \
            jax.grad(lambda p: loss(p)[0])(params)

    (loss, m), (loss_b, m_b), (loss_k, m_k), grads = run(params)
    np.testing.assert_allclose(-m["elbo_nats"], m["recon_nats"] + m["kl"], rtol=1e-5)
    np.testing.assert_allclose(loss, m["nll_bound_nats"], rtol=1e-6)
    # beta-VAE: the loss reweights the KL only.
    np.testing.assert_allclose(loss_b, m_b["recon_nats"] + 4.0 * m_b["kl"], rtol=1e-5)
    # IWAE with the MC KL: log mean_k w_k >= mean_k log w_k on the same samples (Jensen), exactly.
    assert m_k["iwae_nats"] >= m_k["elbo_nats"]
    np.testing.assert_allclose(loss_k, -m_k["iwae_nats"], rtol=1e-6)
    # The loss is differentiable and its gradient reaches the encoder (reparameterisation).
    enc = jax.tree.leaves(grads["encoder"])
    assert all(np.all(np.isfinite(g)) for g in enc) and sum(float(jnp.abs(g).sum()) for g in enc) > 0


def test_dynamic_binarization_uses_the_rng():
    x = jnp.full((2000,), 64, jnp.uint8)  # p = 64/255
    binarize = jax.jit(lambda k: vae.preprocess(x, k, vae.Bernoulli()))
    a, b = binarize(jax.random.key(0)), binarize(jax.random.key(1))
    assert set(np.unique(a)) <= {0.0, 1.0} and np.any(a != b)
    # mean of 2000 Bernoulli(p): within 4 standard errors of p
    p = 64 / 255
    assert abs(float(a.mean()) - p) < 4 * math.sqrt(p * (1 - p) / 2000)
    u = vae.preprocess(jnp.array([0, 255], jnp.uint8), None, vae.DiscretizedLogistic(), binarize=None)
    np.testing.assert_allclose(u, [-1.0, 1.0])
    toy = jnp.array([[0.3, -2.0]])
    assert vae.preprocess(toy, jax.random.key(0), vae.Gaussian()) is toy


def test_variational_autoencoder_validates():
    model = _small_image_model()
    with pytest.raises(ValueError, match="kl='exact'"):
        vae.VariationalAutoencoder(model, kl="exact")
    with pytest.raises(ValueError, match="no beta"):
        vae.VariationalAutoencoder(model, iwae_k=5, beta=2.0)
    with pytest.raises(ValueError, match="binarize=None"):
        vae.VariationalAutoencoder(model, likelihood="logistic")
    with pytest.raises(ValueError, match="iwae_k must be a positive int"):
        vae.VariationalAutoencoder(model, iwae_k=0)
    with pytest.raises(ValueError, match="binarize='static'"):
        vae.VariationalAutoencoder(model, binarize="static")


def _train(loss_fn, params, batches, steps, lr):
    state = TrainState.create(params=params, tx=make_optimizer(learning_rate=lr), key=jax.random.key(7))
    step = make_train_step(loss_fn)
    losses = []
    for i in range(steps):
        state, metrics = step(state, batches(i))
        losses.append(metrics["loss"])
    return state, np.asarray(jax.device_get(losses))


def test_training_lowers_the_loss_on_binary_images():
    """16 fixed random binary 4x4 patterns (uint8 0/255, so dynamic binarisation keeps them): the
    negative ELBO falls from ~16 ln 2 = 11 nats to under half of that."""
    model = _small_image_model()
    data = (jax.random.bernoulli(jax.random.key(0), 0.5, (16, 4, 4, 1)) * 255).astype(jnp.uint8)
    params = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 4, 4, 1)))["params"]
    _, losses = _train(vae.VariationalAutoencoder(model, iwae_k=2).loss, params, lambda i: {"x": data}, 300, 1e-2)
    first, last = losses[:10].mean(), losses[-20:].mean()
    assert first > 9.0 and last < 0.5 * first, (first, last)


def test_training_lowers_the_loss_on_toy_data():
    """Two 2D Gaussian blobs, Gaussian decoder with learned variance."""
    model = vae.mlp_vae((2,), latent_dim=2, num_params=2, hidden=(32, 32))
    params = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 2)))["params"]

    @jax.jit
    def batches(i):
        k1, k2 = jax.random.split(jax.random.fold_in(jax.random.key(3), i))
        centre = jnp.where(jax.random.bernoulli(k1, 0.5, (128, 1)), 2.0, -2.0)
        return {"x": centre + 0.1 * jax.random.normal(k2, (128, 2))}

    loss_fn = vae.VariationalAutoencoder(model, likelihood="gaussian", binarize=None).loss
    _, losses = _train(loss_fn, params, batches, 200, 5e-3)
    first, last = losses[:10].mean(), losses[-20:].mean()
    assert last < first - 2.0, (first, last)
