"""The forward process: iterating the seed's one step matches the closed form q(x_t | x_0), and the
posterior q(x_{t-1} | x_t, x_0) equals the product-of-Gaussians Bayes result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax.diffusion import NoiseSchedule, forward_step, q_mean_variance, q_posterior, q_sample


def _iterate_forward(schedule, x0, t_max, key):
    """x_1..x_{t_max} by the seed's one step; returns the stack [t_max, N, D]."""

    def step(x, t):
        x = forward_step(schedule, x, t, jax.random.normal(jax.random.fold_in(key, t), x.shape))
        return x, x

    _, xs = jax.lax.scan(step, x0, jnp.arange(1, t_max + 1))
    return xs


def test_iterated_forward_steps_match_closed_form(key):
    """Monte Carlo: mean and variance of x_t after t one-step updates equal sqrt(abar_t) x_0 and
    1 - abar_t, within 4 standard errors (mean SE = sqrt(var / N), variance SE = var sqrt(2 / (N - 1)))."""
    T, N = 400, 20_000
    s = NoiseSchedule.linear(T, 1e-4 * 1000 / T, 0.02 * 1000 / T)
    x0_point = jnp.array([1.5, -0.7, 0.0])
    x0 = jnp.broadcast_to(x0_point, (N, 3))
    xs = _iterate_forward(s, x0, T, key)  # [T, N, 3]
    for t in (1, 5, 50, 200, 400):
        xt = np.asarray(xs[t - 1], np.float64)
        mean, var = q_mean_variance(s, x0_point, t)
        mean, var = np.asarray(mean), float(var.reshape(-1)[0])
        np.testing.assert_allclose(var, 1 - float(s.alpha_bars[t - 1]), rtol=1e-6)
        se_mean = np.sqrt(var / N)
        assert np.all(np.abs(xt.mean(0) - mean) < 4 * se_mean), (t, xt.mean(0), mean)
        se_var = var * np.sqrt(2.0 / (N - 1))
        assert np.all(np.abs(xt.var(0) - var) < 4 * se_var), (t, xt.var(0), var)
        # Independent coordinates: off-diagonal covariance ~ 0 (SE = var / sqrt(N)).
        cov = np.cov(xt.T)
        assert abs(cov[0, 1]) < 4 * var / np.sqrt(N)
    # The closed-form sampler has the same law: one draw per example at t = 50.
    eps = jax.random.normal(jax.random.fold_in(key, 10_000), x0.shape)
    x50 = np.asarray(q_sample(s, x0, 50, eps))
    var50 = 1 - float(s.alpha_bars[49])
    assert np.all(np.abs(x50.mean(0) - float(s.sqrt_alpha_bars[49]) * np.asarray(x0_point)) < 4 * np.sqrt(var50 / N))


def test_iterated_forward_is_exactly_q_sample_for_one_step(key):
    s = NoiseSchedule.linear(10)
    x0 = jax.random.normal(key, (5, 2))
    eps = jax.random.normal(jax.random.fold_in(key, 1), (5, 2))
    np.testing.assert_allclose(forward_step(s, x0, 1, eps), q_sample(s, x0, 1, eps), rtol=1e-6)


@pytest.mark.parametrize("make", [NoiseSchedule.linear, NoiseSchedule.cosine])
def test_posterior_equals_bayes_product_of_gaussians(key, make):
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): precision 1/(1 - abar_{t-1}) +
    alpha_t / beta_t and precision-weighted mean, computed independently in float64."""
    T = 300
    s = make(T)
    betas = np.asarray(s.betas, np.float64)
    abar = np.cumprod(1.0 - betas)
    t = np.array([2, 3, 10, 77, 150, 299, 300])
    k1, k2 = jax.random.split(key)
    x0 = np.asarray(jax.random.normal(k1, (t.size, 4)), np.float64)
    xt = np.asarray(jax.random.normal(k2, (t.size, 4)), np.float64)
    mean, var, logvar = q_posterior(s, jnp.asarray(x0, jnp.float32), jnp.asarray(xt, jnp.float32), jnp.asarray(t))

    ab_prev, beta = abar[t - 2], betas[t - 1]
    alpha = 1.0 - beta
    prec = 1.0 / (1.0 - ab_prev) + alpha / beta  # prior N(sqrt(ab_prev) x0, 1-ab_prev) x likelihood
    var_ref = 1.0 / prec
    mean_ref = var_ref[:, None] * (np.sqrt(ab_prev)[:, None] * x0 / (1.0 - ab_prev)[:, None]
                                   + np.sqrt(alpha)[:, None] * xt / beta[:, None])
    np.testing.assert_allclose(np.asarray(var).reshape(-1), var_ref, rtol=2e-4)
    np.testing.assert_allclose(np.asarray(logvar).reshape(-1), np.log(var_ref), atol=2e-4)
    np.testing.assert_allclose(mean, mean_ref, rtol=2e-3, atol=2e-4)


def test_posterior_at_t1_is_point_mass_at_x0(key):
    s = NoiseSchedule.linear(50)
    x0 = jax.random.normal(key, (3, 2))
    xt = jax.random.normal(jax.random.fold_in(key, 1), (3, 2))
    mean, var, _ = q_posterior(s, x0, xt, jnp.ones((3,), jnp.int32))
    np.testing.assert_allclose(mean, x0, atol=1e-6)
    np.testing.assert_allclose(var, 0.0)


def test_timestep_shape_must_match_batch(key):
    s = NoiseSchedule.linear(10)
    with pytest.raises(ValueError, match="leading axes"):
        q_sample(s, jnp.zeros((4, 2)), jnp.ones((3,), jnp.int32), jnp.zeros((4, 2)))
