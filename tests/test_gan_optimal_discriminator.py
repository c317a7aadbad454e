"""The seed's classical consequences: D*(x) = p_data / (p_data + p_g) and
V(D*, G) = -log 4 + 2 JSD(p_data || p_g), with p_data and p_g two fixed 1D Gaussians."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gen_jax import gan

MU_DATA, SD_DATA = 0.0, 1.0
MU_G, SD_G = 1.5, 0.7
GRID = np.linspace(-10.0, 10.0, 40001)


def _log_normal(x, mu, sd):
    return -0.5 * ((x - mu) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)


def _densities(x):
    return np.exp(_log_normal(x, MU_DATA, SD_DATA)), np.exp(_log_normal(x, MU_G, SD_G))


def _value_by_quadrature(logit):
    """V(D, G) = int p_data log D + p_g log(1 - D) dx on GRID (trapezoid), D = sigmoid(logit)."""
    p, q = _densities(GRID)
    log_d, log_1md = -np.logaddexp(0.0, -logit), -np.logaddexp(0.0, logit)
    return np.trapezoid(p * log_d + q * log_1md, GRID)


def _jsd_by_quadrature():
    p, q = _densities(GRID)
    m = 0.5 * (p + q)
    kl = lambda a: np.trapezoid(np.where(a > 0, a * (np.log(a) - np.log(m)), 0.0), GRID)  # noqa: E731
    return 0.5 * kl(p) + 0.5 * kl(q)


def _optimal_logit(x):
    """logit D*(x) = log p_data(x) - log p_g(x)."""
    return _log_normal(x, MU_DATA, SD_DATA) - _log_normal(x, MU_G, SD_G)


def test_value_at_optimal_discriminator_is_minus_log4_plus_2jsd():
    jsd = _jsd_by_quadrature()
    assert 0.05 < jsd < math.log(2)  # the two Gaussians overlap but differ
    np.testing.assert_allclose(_value_by_quadrature(_optimal_logit(GRID)), -math.log(4) + 2 * jsd, atol=1e-8)
    # Monte Carlo through gan.value_function with the exact logits of D*.
    n = 400_000
    kx, kz = jax.random.split(jax.random.key(0))
    x = MU_DATA + SD_DATA * np.asarray(jax.random.normal(kx, (n,)), np.float64)
    g = MU_G + SD_G * np.asarray(jax.random.normal(kz, (n,)), np.float64)
    v_mc = float(gan.value_function(jnp.asarray(_optimal_logit(x), jnp.float32),
                                    jnp.asarray(_optimal_logit(g), jnp.float32)))
    # Per-sample std of log D* terms is < 1.5, so the MC standard error is < 0.005.
    np.testing.assert_allclose(v_mc, -math.log(4) + 2 * jsd, atol=0.01)
    # Any other D does worse: e.g. D = 1/2 gives -log 4 < V(D*).
    assert _value_by_quadrature(np.zeros_like(GRID)) < -math.log(4) + 2 * jsd - 0.1


def test_trained_discriminator_approaches_optimal():
    """Maximise V over an MLP D with G fixed; D -> D* on the region where both densities have mass."""
    width = 32

    def init(key):
        k1, k2, k3 = jax.random.split(key, 3)
        return {"w1": jax.random.normal(k1, (1, width)), "b1": jnp.zeros(width),
                "w2": jax.random.normal(k2, (width, width)) / math.sqrt(width), "b2": jnp.zeros(width),
                "w3": jax.random.normal(k3, (width,)) / math.sqrt(width), "b3": jnp.zeros(())}

    def logit(p, x):  # x [B] -> [B]
        h = jnp.tanh(x[:, None] @ p["w1"] + p["b1"][None, :])
        h = jnp.tanh(h @ p["w2"] + p["b2"][None, :])
        return h @ p["w3"] + p["b3"]

    def loss(p, key):
        kx, kz = jax.random.split(key)
        x = MU_DATA + SD_DATA * jax.random.normal(kx, (1024,))
        g = MU_G + SD_G * jax.random.normal(kz, (1024,))
        return gan.discriminator_loss(logit(p, x), logit(p, g), "minimax")  # = -V

    tx = optax.adam(optax.cosine_decay_schedule(1e-2, 500, alpha=0.05))

    @jax.jit
    def train(params):
        def step(carry, key):
            p, opt = carry
            grads = jax.grad(loss)(p, key)
            updates, opt = tx.update(grads, opt, p)
            return (optax.apply_updates(p, updates), opt), None

        (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(jax.random.key(1), 500))
        return p

    params = train(init(jax.random.key(0)))
    logit_trained = np.asarray(logit(params, jnp.asarray(GRID, jnp.float32)), np.float64)
    d_trained = 1.0 / (1.0 + np.exp(-logit_trained))
    p, q = _densities(GRID)
    d_star = p / (p + q)
    both = (p > 0.05) & (q > 0.05)  # where both densities have mass: about [-0.4, 2.4]
    assert both.sum() > 1000
    err = np.max(np.abs(d_trained[both] - d_star[both]))
    assert err < 0.05, f"max |D - D*| on the overlap = {err:.3f}"
    # Its value approaches the maximum -log 4 + 2 JSD from below.
    v_trained = _value_by_quadrature(logit_trained)
    v_star = -math.log(4) + 2 * _jsd_by_quadrature()
    assert v_trained <= v_star + 1e-6
    assert v_star - v_trained < 0.01, f"V(D) = {v_trained:.4f} vs V(D*) = {v_star:.4f}"
