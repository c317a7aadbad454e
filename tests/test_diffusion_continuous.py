"""Continuous-time diffusion (VDM): log-SNR schedules, the bound's terms against closed forms on Gaussian data,
the learned schedule's variance gradient, the 256-way decoder, sampling with the exact denoiser, training.
The identities (T -> infinity limit, DDPM's KL terms, schedule invariance, tightness) are checks of
experiments/derivations/diffusion_continuous.py, run by tests/test_derivations.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_test_utils import train_on_ring8
from experiments.derivations.diffusion_continuous import LMAX, LMIN, GaussianDenoiser, gaussian_terms
from gen_jax import diffusion
from gen_jax.diffusion import (NoiseSchedule, VariationalDiffusionModel, log_snr_and_derivative, make_log_snr_schedule,
                               reconstruction_loss)


@pytest.mark.parametrize("kind", ["linear", "cosine", "learned"])
def test_log_snr_schedules_decrease_between_their_endpoints_with_autodiff_derivative(kind):
    sched = make_log_snr_schedule(kind, LMAX, LMIN, hidden=16)
    variables = sched.init(jax.random.key(0), jnp.zeros((1,)))
    t = jnp.linspace(0.0, 1.0, 257)
    lam, dlam = log_snr_and_derivative(sched, variables, t)
    np.testing.assert_allclose([lam[0], lam[-1]], [LMAX, LMIN], atol=2e-4)
    assert np.all(np.diff(np.asarray(lam)) < 0) and np.all(np.asarray(dlam) < 0)
    # the derivative against central differences in float64 terms (interior points)
    h = 1e-3
    fd = (sched.apply(variables, t[1:-1] + h) - sched.apply(variables, t[1:-1] - h)) / (2 * h)
    np.testing.assert_allclose(dlam[1:-1], fd, rtol=2e-2, atol=2e-2)
    a, s = diffusion.alpha_sigma(lam)
    np.testing.assert_allclose(a ** 2 + s ** 2, 1.0, atol=1e-6)
    np.testing.assert_allclose(jnp.log(a ** 2 / s ** 2), lam, rtol=1e-4, atol=1e-3)


def test_schedule_validation():
    with pytest.raises(ValueError, match="log_snr_max > log_snr_min"):
        make_log_snr_schedule("linear", -5.0, 13.3)
    with pytest.raises(ValueError, match="must be one of"):
        make_log_snr_schedule("quadratic")
    with pytest.raises(ValueError, match="strictly decreasing"):
        NoiseSchedule.from_log_snr(lambda t: t, 10)


def test_discrete_schedule_from_log_snr_reads_the_log_snr_at_i_over_T():
    T = 50
    sched = make_log_snr_schedule("cosine", 8.0, -6.0)
    ns = NoiseSchedule.from_log_snr(lambda t: sched.apply({}, t), T)
    np.testing.assert_allclose(ns.log_snr, sched.apply({}, jnp.arange(1, T + 1) / T), rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(ns.alpha_bars, jax.nn.sigmoid(ns.log_snr), rtol=1e-5)


def _gaussian_model(kind, s, D):
    return VariationalDiffusionModel(GaussianDenoiser(s), make_log_snr_schedule(kind, LMAX, LMIN, hidden=16), (D,))


def test_continuous_bound_terms_match_their_closed_forms_on_gaussian_data():
    """Monte Carlo of the model's three terms (exact denoiser, N(0, s^2) data) equals their closed forms, and the
    bound is within 0.01 nats/dim of the true entropy. (The T -> infinity limit, DDPM's KL terms, the
    schedule invariance and tightness on a mixture: experiments/derivations/diffusion_continuous.py.)"""
    D, s, n = 2, 0.7, 4096
    model = _gaussian_model("linear", s, D)
    params, _ = model.init(jax.random.key(0))
    x = s * jax.random.normal(jax.random.key(1), (n, D))
    out = jax.jit(lambda p, x, k: model.bound(p, x, k, num_times=8))(params, x, jax.random.key(2))
    closed = gaussian_terms(D, s)
    prior, diff, recon = closed["prior"], closed["diffusion"], closed["reconstruction"]
    for name, value, tol in (("prior_nats", prior, 0.02), ("decoder_nats", recon, 0.05)):
        np.testing.assert_allclose(float(jnp.mean(out[name])), value, atol=tol)
    d = np.asarray(out["diffusion_nats"], np.float64)
    se = d.std(ddof=1) / math.sqrt(n)
    assert abs(d.mean() - diff) < 4 * se + 1e-3, (d.mean(), diff, se)
    assert 0 <= prior + diff + recon - closed["entropy"] < 0.01 * D


def test_learned_schedule_shape_gets_the_gradient_of_the_second_moment_and_endpoints_the_plain_one():
    """Shape: grad E[L^2] / (2 E[L]) (E[L] held fixed); denoiser and endpoints: grad E[L]."""
    model = VariationalDiffusionModel(diffusion.MLPDenoiser(hidden=16, num_blocks=1, time_dim=8),
                                      make_log_snr_schedule("learned", LMAX, LMIN, hidden=8), (2,))
    params, _ = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (32, 2))
    t = jax.random.uniform(jax.random.key(2), (32,))
    eps, eps0 = jax.random.normal(jax.random.key(3), (2, 32, 2))

    def diff(p, train):
        return model.terms(p, x, t, eps, eps0, discrete=False, train=train)["diffusion_nats"]

    @jax.jit
    def grads(p):
        mean = jnp.mean(diff(p, False))
        return (jax.grad(lambda p: jnp.mean(diff(p, True)))(p), jax.grad(lambda p: jnp.mean(diff(p, False)))(p),
                jax.grad(lambda p: jnp.mean(jnp.square(diff(p, False))) / (2 * mean))(p))

    g_trick, g_plain, g_square = grads(params)
    close = lambda a, b: jax.tree_util.tree_map(  # noqa: E731
        lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5), a, b)
    close(g_trick["denoiser"], g_plain["denoiser"])
    for k in ("log_snr_max", "log_snr_min"):
        np.testing.assert_allclose(g_trick["schedule"][k], g_plain["schedule"][k], rtol=1e-4, atol=1e-6)
    shape = lambda g: {k: v for k, v in g["schedule"].items() if not k.startswith("log_snr")}  # noqa: E731
    close(shape(g_trick), shape(g_square))
    assert float(jnp.abs(shape(g_square)["l2"]["kernel"]).max()) > 0  # a real gradient, not zeros
    np.testing.assert_allclose(*jax.jit(lambda p: (diff(p, True), diff(p, False)))(params), rtol=1e-6)  # same value


def test_reconstruction_decoder_is_a_distribution_over_the_256_values():
    """For a fixed z_0, exp(-reconstruction loss) summed over the 256 values of a pixel is 1."""
    values = jnp.arange(256, dtype=jnp.float32) * (2 / 255) - 1
    for lam0 in (4.0, 9.0, 13.3):
        a0, s0 = diffusion.alpha_sigma(jnp.float32(lam0))
        z0 = jnp.float32(0.1234) * a0
        x = values[:, None]
        eps = (z0 - a0 * x) / s0
        p = jnp.exp(-reconstruction_loss(jnp.float32(lam0), x, eps, discrete=True))
        np.testing.assert_allclose(float(jnp.sum(p)), 1.0, rtol=1e-4)
        assert int(jnp.argmax(p)) == int(jnp.round((0.1234 + 1) * 127.5))


@pytest.mark.parametrize("deterministic", [False, True])
def test_sampling_with_the_exact_denoiser_reproduces_the_data_distribution(deterministic):
    D, s = 2, 0.6
    model = _gaussian_model("linear", s, D)
    params, _ = model.init(jax.random.key(0))
    x = model.sample(params, jax.random.key(1), 4000, num_steps=200, deterministic=deterministic)
    assert x.shape == (4000, D)
    np.testing.assert_allclose(np.std(np.asarray(x), axis=0), s, rtol=0.06)
    np.testing.assert_allclose(np.mean(np.asarray(x), axis=0), 0.0, atol=0.06)


def test_unet_fourier_features_widen_only_the_input_convolution():
    unet = lambda ff: diffusion.UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), norm_groups=4,  # noqa: E731
                                     fourier_features=ff)
    x, t = jnp.zeros((1, 8, 8, 3)), jnp.ones((1,))
    p0 = jax.eval_shape(unet(()).init, jax.random.key(0), x, t)["params"]
    p1 = jax.eval_shape(unet((7, 8)).init, jax.random.key(0), x, t)["params"]
    assert p0["conv_in"]["kernel"].shape == (3, 3, 3, 8)
    assert p1["conv_in"]["kernel"].shape == (3, 3, 3 * 5, 8)
    rest = lambda p: {k: v for k, v in p.items() if k != "conv_in"}  # noqa: E731
    assert jax.tree_util.tree_map(lambda a: a.shape, rest(p0)) == jax.tree_util.tree_map(lambda a: a.shape, rest(p1))


@pytest.mark.slow  # 200 steps; the vdm_toy smoke run trains VDM end to end in the default suite
def test_vdm_training_lowers_the_bound_on_toy_data():
    model = VariationalDiffusionModel(diffusion.MLPDenoiser(hidden=64, num_blocks=2, time_dim=16),
                                      make_log_snr_schedule("learned", 10.0, -5.0, hidden=16), (2,))
    _, losses, _ = train_on_ring8(model, 200, "nll_nats")
    assert np.mean(losses[-30:]) < np.mean(losses[:30]) - 1.0, (np.mean(losses[:30]), np.mean(losses[-30:]))
