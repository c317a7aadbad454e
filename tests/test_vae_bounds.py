"""The VAE's bounds on a linear-Gaussian model (probabilistic PCA) where everything is analytic.

Model: z ~ N(0, I_k), x | z ~ N(W z + b, s^2 I_d). Then
  log p(x) = log N(x; b, W W^T + s^2 I),
  p(z|x) = N(mu_post, Sigma_post), Sigma_post = (I + W^T W / s^2)^-1, mu_post = Sigma_post W^T (x-b)/s^2,
and for any q: log p(x) - ELBO(q) = KL(q || p(z|x)) (the seed's identity).
The decoder log-likelihood is the library's fixed-variance Gaussian, so the library's sampling,
log-densities, KL, ELBO, IWAE and importance-sampling code are what is under test.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from gen_jax import vae

D, K_LAT, SIGMA, B = 5, 2, 0.5, 4


def _ppca(seed: int, orthogonal: bool):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(D, K_LAT))
    if orthogonal:  # orthogonal columns -> diagonal posterior covariance
        q, _ = np.linalg.qr(w)
        w = q * np.array([1.5, 0.8])[None, :]
    b = rng.normal(size=(D,))
    z = rng.normal(size=(B, K_LAT))
    x = z @ w.T + b + SIGMA * rng.normal(size=(B, D))
    cov = w @ w.T + SIGMA**2 * np.eye(D)
    log_px = stats.multivariate_normal(b, cov).logpdf(x)  # [B]
    post_cov = np.linalg.inv(np.eye(K_LAT) + w.T @ w / SIGMA**2)
    post_mean = (x - b) @ w @ post_cov.T / SIGMA**2  # [B, k]
    return dict(w=w, b=b, x=x, log_px=log_px, post_cov=post_cov, post_mean=post_mean)


def _log_likelihood(m):
    """z [B, k] -> log N(x; W z + b, s^2 I) [B], via the library's Gaussian likelihood."""
    lik = vae.Gaussian(learned_scale=False, log_scale=math.log(SIGMA))
    w, b, x = (jnp.asarray(m[n], jnp.float32) for n in ("w", "b", "x"))
    return lambda z: lik.log_prob(z @ w.T + b[None, :], x)


def _kl_to_posterior(mean, log_var, m):
    """KL(N(mean, diag(exp(log_var))) || N(mu_post, Sigma_post)) in float64, [B]."""
    prec = np.linalg.inv(m["post_cov"])
    var = np.exp(log_var)
    diff = m["post_mean"] - mean
    return 0.5 * (var @ np.diag(prec) + np.einsum("bi,ij,bj->b", diff, prec, diff) - K_LAT
                  + np.linalg.slogdet(m["post_cov"])[1] - log_var.sum(-1))


def _perturbed_q(m, seed, shift=0.3, log_inflate=0.4):
    """A diagonal q near the posterior: mean shifted by ``shift`` posterior std devs (random
    directions), log variances raised by ``log_inflate`` (plus jitter)."""
    rng = np.random.default_rng(seed)
    post_var = np.diag(m["post_cov"])[None, :]
    mean = m["post_mean"] + shift * np.sqrt(post_var) * rng.normal(size=(B, K_LAT))
    log_var = np.log(post_var) + log_inflate + 0.1 * rng.normal(size=(B, K_LAT))
    return mean, log_var


def _f32(*a):
    return tuple(jnp.asarray(v, jnp.float32) for v in a)


def test_gap_equals_kl_to_true_posterior_closed_form():
    """log p(x) - [E_q log p(x|z) - kl_diag_normal] == KL(q || p(z|x)), expectation in closed form."""
    m = _ppca(0, orthogonal=False)
    mean, log_var = _perturbed_q(m, 1)
    w, b, x = m["w"], m["b"], m["x"]
    resid = x - mean @ w.T - b
    trace = np.einsum("dj,bj,dj->b", w, np.exp(log_var), w)  # tr(W diag(v) W^T)
    recon = -0.5 * D * math.log(2 * math.pi * SIGMA**2) - (np.sum(resid**2, -1) + trace) / (2 * SIGMA**2)
    elbo = recon - np.asarray(vae.kl_diag_normal(*_f32(mean, log_var)), np.float64)
    kl_post = _kl_to_posterior(mean, log_var, m)
    assert np.all(kl_post > 0.05)  # a diagonal q cannot match this full-covariance posterior
    np.testing.assert_allclose(m["log_px"] - elbo, kl_post, atol=2e-4)


def test_library_elbo_gap_equals_kl_to_true_posterior_mc():
    """The library's Monte Carlo ELBO (analytic KL) satisfies log p(x) - ELBO = KL(q || p(z|x)) within
    4 standard errors (32 independent estimates of 512 samples each)."""
    m = _ppca(2, orthogonal=False)
    mean, log_var = _perturbed_q(m, 3)
    ll = _log_likelihood(m)
    keys = jax.random.split(jax.random.key(0), 32)
    est = jax.jit(jax.vmap(lambda k: vae.elbo(ll, *_f32(mean, log_var), k, num_samples=512).elbo))(keys)
    est = np.asarray(est, np.float64)  # [32, B]
    se = est.std(0, ddof=1) / math.sqrt(est.shape[0])
    gap = m["log_px"] - est.mean(0)
    kl_post = _kl_to_posterior(mean, log_var, m)
    assert np.all(gap > 0), "ELBO must lie below log p(x)"
    np.testing.assert_array_less(np.abs(gap - kl_post), 4 * se + 1e-3)


def test_elbo_below_log_px_for_random_q():
    m = _ppca(4, orthogonal=False)
    ll = _log_likelihood(m)

    @jax.jit
    def terms(mean, log_var, key):
        return (vae.elbo(ll, mean, log_var, key, num_samples=4096),
                vae.elbo(ll, mean, log_var, key, num_samples=4096, beta=0.5))

    for seed in range(3):
        mean, log_var = _perturbed_q(m, 10 + seed, shift=2.0, log_inflate=-0.5)
        e, e_half = terms(*_f32(mean, log_var), jax.random.key(seed))
        assert np.all(np.asarray(e.elbo) < m["log_px"])
        # beta only reweights the KL in the objective.
        np.testing.assert_allclose(e_half.objective, e.recon - 0.5 * e.kl, rtol=1e-6)
        np.testing.assert_allclose(e_half.elbo, e.elbo, rtol=1e-6)


def test_gap_is_zero_at_true_posterior():
    m = _ppca(5, orthogonal=True)
    mean, log_var = _f32(m["post_mean"], np.log(np.diag(m["post_cov"]))[None, :].repeat(B, 0))
    ll = _log_likelihood(m)

    @jax.jit
    def bounds(mean, log_var):
        mc = vae.elbo(ll, mean, log_var, jax.random.key(0), num_samples=1, kl="mc").elbo
        analytic = vae.elbo(ll, mean, log_var, jax.random.key(1), num_samples=20000).elbo
        return mc, analytic

    mc, analytic = bounds(mean, log_var)
    # With the MC KL, log p(x|z) + log p(z) - log q(z|x) = log p(x) for every z: exact for 1 sample.
    np.testing.assert_allclose(mc, m["log_px"], atol=2e-3)
    # With the analytic KL, the gap vanishes in expectation.
    np.testing.assert_allclose(analytic, m["log_px"], atol=0.03)
    np.testing.assert_allclose(_kl_to_posterior(np.asarray(mean), np.asarray(log_var), m), 0, atol=1e-4)


def test_iwae_bound_non_decreasing_in_k_and_tends_to_log_px():
    """Average over 64 keys and the batch of L_K for K = 1, 8, 64, 512: non-decreasing within 3
    standard errors, never above log p(x) (beyond 3 SE), and within 5% of the ELBO's gap at K = 512."""
    m = _ppca(6, orthogonal=False)
    mean, log_var = _f32(*_perturbed_q(m, 7, shift=1.0, log_inflate=0.7))
    ll = _log_likelihood(m)
    ks = (1, 8, 64, 512)
    reps = 64

    @jax.jit
    def all_bounds(key):
        out = []
        for kk in ks:
            keys = jax.random.split(jax.random.fold_in(key, kk), reps)
            v = jax.vmap(lambda r: vae.iwae_bound(ll, mean, log_var, r, num_samples=kk))(keys)
            out.append(jnp.mean(v, axis=1))  # average over the batch, [reps]
        return jnp.stack(out)  # [len(ks), reps]

    v = np.asarray(all_bounds(jax.random.key(0)), np.float64)
    means, ses = v.mean(1), v.std(1, ddof=1) / math.sqrt(reps)
    target = m["log_px"].mean()
    gaps = target - means
    assert gaps[0] > 0.3, f"test needs a loose q, ELBO gap {gaps[0]}"
    for i in range(len(ks) - 1):
        assert means[i + 1] >= means[i] - 3 * math.hypot(ses[i], ses[i + 1]), (ks, means)
    assert np.all(means <= target + 3 * ses), (means, target)
    assert gaps[-1] < 0.05 * gaps[0] + 3 * ses[-1], (gaps, ses)
    # K = 1 is the ELBO with the Monte Carlo KL (same samples, same key).
    key = jax.random.key(99)
    np.testing.assert_allclose(vae.iwae_bound(ll, mean, log_var, key, num_samples=1),
                               vae.elbo(ll, mean, log_var, key, kl="mc").elbo, rtol=1e-6)


def test_importance_sampled_log_likelihood_matches_analytic():
    """16 independent K=5000 estimates: their mean is within 4 standard errors (+1e-3) of the analytic
    log p(x), and each one is within 0.05 nats."""
    m = _ppca(8, orthogonal=False)
    mean, log_var = _f32(*_perturbed_q(m, 9, shift=0.5, log_inflate=0.5))
    ll = _log_likelihood(m)
    estimate = jax.jit(jax.vmap(lambda r: vae.importance_sampled_log_likelihood(
        ll, mean, log_var, r, num_samples=5000, chunk_size=1000)))
    est = np.asarray(estimate(jax.random.split(jax.random.key(0), 16)), np.float64)  # [16, B]
    err = est - m["log_px"][None, :]
    se = err.std(0, ddof=1) / 4.0
    np.testing.assert_array_less(np.abs(err.mean(0)), 4 * se + 1e-3)
    np.testing.assert_array_less(np.abs(err), 0.05)
    elbo = vae.elbo(ll, mean, log_var, jax.random.key(1), num_samples=5000).elbo
    assert np.all(m["log_px"] - np.asarray(elbo) > 0.1)  # the ELBO alone is visibly off


def test_importance_sampling_chunking_invariant():
    """Chunk sizes 96 (not dividing K = 1000) and 250 give the unchunked estimate, which equals the
    IWAE bound with the same key."""
    m = _ppca(10, orthogonal=False)
    mean, log_var = _f32(*_perturbed_q(m, 11, shift=2.0, log_inflate=0.5))
    ll = _log_likelihood(m)
    chunks = (None, 96, 250)

    @jax.jit
    def estimates(key):
        return [vae.importance_sampled_log_likelihood(ll, mean, log_var, key, num_samples=1000,
                                                      chunk_size=c) for c in chunks]

    key = jax.random.key(3)
    whole, *chunked = estimates(key)
    for c, est in zip(chunks[1:], chunked):
        np.testing.assert_allclose(est, whole, atol=2e-5, rtol=0, err_msg=f"chunk_size={c}")
    np.testing.assert_allclose(vae.iwae_bound(ll, mean, log_var, key, num_samples=1000), whole,
                               atol=2e-5, rtol=0)
    # A different key gives a different (independent) estimate: the check above is not vacuous.
    assert np.max(np.abs(np.asarray(estimates(jax.random.key(4))[0]) - np.asarray(whole))) > 1e-4


@pytest.mark.slow
def test_importance_sampling_memory_bounded_in_k():
    """The compiled estimator's temporaries do not grow with K (chunks are processed sequentially)."""
    m = _ppca(12, orthogonal=False)
    mean, log_var = _f32(*_perturbed_q(m, 13))
    ll = _log_likelihood(m)

    def temp_bytes(k):
        f = jax.jit(lambda mu, lv, r: vae.importance_sampled_log_likelihood(
            ll, mu, lv, r, num_samples=k, chunk_size=64))
        analysis = f.lower(mean, log_var, jax.random.key(0)).compile().memory_analysis()
        if analysis is None:
            pytest.skip("memory analysis unavailable on this backend")
        return analysis.temp_size_in_bytes

    assert temp_bytes(64 * 200) <= 1.5 * temp_bytes(64 * 2) + 4096


def test_log_weight_terms_one_sample_equals_the_vmapped_route():
    """S = 1 calls the likelihood once, unbatched; S > 1 vmaps it. Both give log p(x|z) of each
    sample exactly: the single sample's terms equal each row of the same sample repeated."""
    m = _ppca(6, orthogonal=False)
    mean, log_var = _f32(*_perturbed_q(m, 7))
    z = vae.posterior_samples(jax.random.key(8), mean, log_var, jnp.arange(1))
    one = vae.log_weight_terms(_log_likelihood(m), mean, log_var, z)
    three = vae.log_weight_terms(_log_likelihood(m), mean, log_var, jnp.repeat(z, 3, axis=0))
    closed = stats.multivariate_normal  # log N(x; W z + b, s^2 I) by scipy, per example
    want = np.array([closed(m["w"] @ zi + m["b"], SIGMA**2 * np.eye(D)).logpdf(xi)
                     for zi, xi in zip(np.asarray(z[0], np.float64), m["x"])])
    np.testing.assert_allclose(one[0][0], want, rtol=1e-5, atol=1e-4)
    for a, b in zip(one, three):
        assert a.shape == (1, B) and b.shape == (3, B)
        np.testing.assert_allclose(np.broadcast_to(a, b.shape), b, rtol=1e-6, atol=1e-6)
