"""Gaussian KL, the reparameterisation gradient, and the decoder likelihoods p_theta(x|z)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from gen_jax import vae


def test_analytic_kl_matches_monte_carlo():
    """kl_diag_normal equals the mean of kl_monte_carlo over 20000 samples within 4 standard errors."""
    rng = np.random.default_rng(0)
    mean = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    log_var = jnp.asarray(rng.normal(scale=0.7, size=(5, 3)), jnp.float32)
    n = 20000

    @jax.jit
    def estimates(key):
        z = vae.posterior_samples(key, mean, log_var, jnp.arange(n))  # [n, B, k]
        return vae.kl_monte_carlo(z, mean, log_var), vae.kl_diag_normal(mean, log_var)

    mc, analytic = estimates(jax.random.key(0))
    mc = np.asarray(mc, np.float64)
    se = mc.std(0, ddof=1) / math.sqrt(n)
    np.testing.assert_array_less(np.abs(mc.mean(0) - np.asarray(analytic)), 4 * se)
    # And the analytic value against the textbook formula in float64.
    v = np.exp(np.asarray(log_var, np.float64))
    m = np.asarray(mean, np.float64)
    np.testing.assert_allclose(analytic, 0.5 * np.sum(v + m**2 - 1 - np.log(v), -1), rtol=1e-5)
    np.testing.assert_allclose(vae.kl_diag_normal(jnp.zeros((2, 3)), jnp.zeros((2, 3))), 0.0)


def test_reparameterised_gradient_matches_analytic():
    """d/dmu E[z^2] = 2 mu and d/dlog_var E[z^2] = sigma^2 for z ~ N(mu, sigma^2), estimated by
    differentiating through sample_diag_normal; within 4 standard errors of the per-sample gradients."""
    mu = jnp.array([[0.7, -1.3]])
    log_var = jnp.array([[-0.4, 0.5]])
    n = 50000

    def f(mu, log_var, key):
        return jnp.sum(jnp.square(vae.sample_diag_normal(key, mu, log_var)))

    grads = jax.jit(jax.vmap(jax.grad(f, argnums=(0, 1)), in_axes=(None, None, 0)))(
        mu, log_var, jax.random.split(jax.random.key(1), n))
    for g, expected in zip(grads, (2 * mu, jnp.exp(log_var))):
        g = np.asarray(g, np.float64)[:, 0]  # [n, k]
        se = g.std(0, ddof=1) / math.sqrt(n)
        np.testing.assert_array_less(np.abs(g.mean(0) - np.asarray(expected)[0]), 4 * se)


def test_diag_normal_log_prob_matches_scipy():
    rng = np.random.default_rng(2)
    z, m = rng.normal(size=(2, 4, 3))
    lv = rng.normal(size=(4, 3))
    expected = stats.norm(m, np.exp(0.5 * lv)).logpdf(z).sum(-1)
    got = vae.diag_normal_log_prob(*(jnp.asarray(a, jnp.float32) for a in (z, m, lv)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(vae.standard_normal_log_prob(jnp.asarray(z, jnp.float32)),
                               stats.norm().logpdf(z).sum(-1), rtol=1e-5)


def test_bernoulli_log_likelihood_by_hand():
    logits = jnp.array([[0.0, 2.0, -1.0]])
    x = jnp.array([[1.0, 0.0, 1.0]])
    sig = lambda a: 1.0 / (1.0 + math.exp(-a))  # noqa: E731
    expected = math.log(0.5) + math.log(1.0 - sig(2.0)) + math.log(sig(-1.0))
    np.testing.assert_allclose(vae.Bernoulli().log_prob(logits, x), [expected], rtol=1e-6)
    # Summed over every non-batch axis of an image: [B, H, W, C] -> [B].
    img_logits = jnp.full((2, 3, 3, 1), 1.5)
    img = jnp.ones((2, 3, 3, 1))
    np.testing.assert_allclose(vae.Bernoulli().log_prob(img_logits, img),
                               [9 * math.log(sig(1.5))] * 2, rtol=1e-6)
    np.testing.assert_allclose(vae.Bernoulli().mean(logits), [[0.5, sig(2.0), sig(-1.0)]], rtol=1e-6)


def test_gaussian_likelihoods_match_scipy():
    rng = np.random.default_rng(3)
    x, mu, log_s = rng.normal(size=(3, 4, 2))
    learned = jnp.asarray(np.concatenate([mu, log_s], -1), jnp.float32)  # [B, 2 * D]
    np.testing.assert_allclose(vae.Gaussian().log_prob(learned, jnp.asarray(x, jnp.float32)),
                               stats.norm(mu, np.exp(log_s)).logpdf(x).sum(-1), rtol=1e-5)
    fixed = vae.Gaussian(learned_scale=False, log_scale=math.log(0.3))
    np.testing.assert_allclose(fixed.log_prob(jnp.asarray(mu, jnp.float32), jnp.asarray(x, jnp.float32)),
                               stats.norm(mu, 0.3).logpdf(x).sum(-1), rtol=1e-5)
    with pytest.raises(ValueError, match="does not match data shape"):
        vae.Gaussian().log_prob(jnp.zeros((4, 2)), jnp.zeros((4, 2)))


@pytest.mark.parametrize("mu,log_s", [(0.0, -3.0), (0.3, -5.0), (-0.999, -2.0), (1.0, -6.5),
                                      (0.5, 1.5), (2.5, -1.0), (-0.2, -7.0)])
def test_discretized_logistic_sums_to_one_over_256_values(mu, log_s):
    x = jnp.arange(256, dtype=jnp.float32) / 127.5 - 1.0  # the 256 bin centres in [-1, 1]
    params = jnp.stack([jnp.full((256,), mu), jnp.full((256,), log_s)], -1)  # [256, 2]: one pixel
    log_p = jax.jit(vae.DiscretizedLogistic().log_prob)(params, x[:, None])  # [256]
    assert np.all(np.isfinite(log_p))
    np.testing.assert_allclose(jax.nn.logsumexp(log_p), 0.0, atol=2e-4)
    # Interior bins equal sigma((x + h - mu)/s) - sigma((x - h - mu)/s), computed in float64.
    xs = np.asarray(x, np.float64)[1:-1]
    cdf = lambda t: special.expit((t - mu) / math.exp(log_s))  # noqa: E731
    p = cdf(xs + 1 / 255) - cdf(xs - 1 / 255)
    ok = p > 1e-6  # where float64 itself is exact enough to compare in log space
    np.testing.assert_allclose(np.exp(log_p[1:-1])[ok], p[ok], rtol=2e-3, atol=1e-7)


def test_discretized_logistic_samples_are_bin_centres():
    params = jnp.concatenate([jnp.full((64, 5), 0.2), jnp.full((64, 5), -2.0)], -1)
    s = jax.jit(vae.DiscretizedLogistic().sample)(jax.random.key(0), params)
    u = (np.asarray(s) + 1.0) * 127.5
    np.testing.assert_allclose(u, np.round(u), atol=1e-3)
    assert s.min() >= -1.0 and s.max() <= 1.0
    # Gradient of the log-likelihood is finite everywhere, including the two edge bins.
    x = jnp.array([[-1.0, 1.0, 0.0, 1 / 127.5 - 1.0, 1.0 - 1 / 127.5]])
    g = jax.jit(jax.grad(lambda p: vae.DiscretizedLogistic().log_prob(p, x).sum()))(params[:1])
    assert np.all(np.isfinite(g))


def test_get_likelihood_validates():
    assert isinstance(vae.get_likelihood("logistic"), vae.DiscretizedLogistic)
    assert vae.get_likelihood("gaussian_fixed").num_params == 1
    with pytest.raises(ValueError, match="likelihood='poisson'"):
        vae.get_likelihood("poisson")
