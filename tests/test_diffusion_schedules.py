"""Noise schedules (known values, monotone alpha_bar, derived fields), validation, eps/x0/v conversions,
timestep subsequences, and the public import surface of gen_jax.diffusion."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gen_jax.diffusion as gd
from gen_jax.diffusion import NoiseSchedule


def test_every_exported_name_imports():
    for name in gd.__all__:
        assert getattr(gd, name) is not None, name


def test_linear_known_values():
    s = NoiseSchedule.linear(1000, 1e-4, 0.02)
    assert s.num_timesteps == s.T == 1000
    np.testing.assert_allclose(s.betas[0], 1e-4, rtol=1e-6)
    np.testing.assert_allclose(s.betas[-1], 0.02, rtol=1e-6)
    np.testing.assert_allclose(s.betas[499], 1e-4 + 499 * (0.02 - 1e-4) / 999, rtol=1e-6)
    # alpha_bar_T = prod (1 - beta_t) = 4.0358e-5 for the DDPM schedule (sqrt ~ 0.00635).
    np.testing.assert_allclose(s.alpha_bars[-1], 4.03583e-05, rtol=1e-4)


def test_cosine_known_values():
    T, s_off = 1000, 0.008
    s = NoiseSchedule.cosine(T, s_off)
    f = lambda t: math.cos((t / T + s_off) / (1 + s_off) * math.pi / 2) ** 2  # noqa: E731
    for t in (1, 10, 250, 500, 900):
        np.testing.assert_allclose(s.alpha_bars[t - 1], f(t) / f(0), rtol=1e-5)
    np.testing.assert_allclose(s.alpha_bars[499], 0.493844, rtol=1e-4)  # hand-checked value
    np.testing.assert_allclose(s.betas[-1], 0.999, rtol=1e-6)  # the clip acts at t = T
    assert float(s.betas[:-5].max()) < 0.999


def test_sigmoid_schedule_shape():
    s = NoiseSchedule.sigmoid(1000)
    np.testing.assert_allclose(s.alpha_bars[499], 0.5, atol=2e-3)  # symmetric logit range: abar(1/2) = 1/2
    assert float(s.alpha_bars[-1]) < 1e-4


@pytest.mark.parametrize("make", [NoiseSchedule.linear, NoiseSchedule.cosine, NoiseSchedule.sigmoid])
def test_derived_fields_are_consistent(make):
    s = make(200)
    b = np.asarray(s.betas, np.float64)
    assert np.all((b > 0) & (b < 1))
    abar = np.cumprod(1 - b)
    np.testing.assert_allclose(s.alpha_bars, abar, rtol=1e-4)
    assert np.all(np.diff(np.asarray(s.alpha_bars)) < 0), "alpha_bar must decrease strictly"
    np.testing.assert_allclose(s.alpha_bars_prev[0], 1.0)
    np.testing.assert_allclose(s.alpha_bars_prev[1:], s.alpha_bars[:-1], rtol=1e-6)
    np.testing.assert_allclose(s.snr, abar / (1 - abar), rtol=1e-3)
    np.testing.assert_allclose(s.sqrt_alpha_bars**2 + s.sqrt_one_minus_alpha_bars**2, 1.0, rtol=1e-5)
    pv = np.asarray(s.posterior_variance)
    assert pv[0] == 0.0 and np.all(pv[1:] > 0) and np.all(pv <= b + 1e-7)
    np.testing.assert_allclose(s.posterior_log_variance_clipped[0], np.log(pv[1]), rtol=1e-5)
    # posterior mean coefficients: the t=1 posterior is a point mass at x_0.
    np.testing.assert_allclose(s.posterior_mean_coef1[0], 1.0, rtol=1e-5)
    np.testing.assert_allclose(s.posterior_mean_coef2[0], 0.0, atol=1e-7)


def test_validation_errors():
    with pytest.raises(ValueError, match="T must be a positive int"):
        NoiseSchedule.linear(0)
    with pytest.raises(ValueError, match="T must be a positive int"):
        NoiseSchedule.cosine(10.5)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        NoiseSchedule.from_betas([0.1, 1.0])
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        NoiseSchedule.from_betas([0.0, 0.5])
    with pytest.raises(ValueError, match="1-D"):
        NoiseSchedule.from_betas(np.full((2, 2), 0.1))
    with pytest.raises(ValueError, match="beta_start"):
        NoiseSchedule.linear(10, beta_start=-0.1)
    with pytest.raises(ValueError, match="variance"):
        NoiseSchedule.linear(10).reverse_log_variance("medium")


def test_schedule_is_jit_data():
    """A schedule passes through jit as a pytree; a different schedule of equal T does not retrace."""
    traces = []

    @jax.jit
    def f(s):
        traces.append(1)
        return s.alpha_bars[-1]

    a = f(NoiseSchedule.linear(50))
    b = f(NoiseSchedule.cosine(50))
    assert len(traces) == 1 and float(a) != float(b)


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_parameterization_conversions_round_trip(key, param):
    s = NoiseSchedule.cosine(100)
    k1, k2, k3 = jax.random.split(key, 3)
    x0 = jax.random.normal(k1, (16, 3, 3, 2))
    eps = jax.random.normal(k2, x0.shape)
    t = jax.random.randint(k3, (16,), 1, 101)
    xt = gd.q_sample(s, x0, t, eps)
    np.testing.assert_allclose(gd.x0_from_eps(s, xt, t, eps), x0, atol=2e-3)
    np.testing.assert_allclose(gd.eps_from_x0(s, xt, t, x0), eps, atol=2e-3)
    v = gd.v_from_x0_eps(s, x0, t, eps)
    np.testing.assert_allclose(gd.x0_from_v(s, xt, t, v), x0, atol=1e-4)
    np.testing.assert_allclose(gd.eps_from_v(s, xt, t, v), eps, atol=1e-4)
    # The true target of each parameterization maps back to the true (x0, eps).
    target = gd.prediction_target(s, x0, t, eps, param)
    x0_hat, eps_hat = gd.predict_x0_eps(s, xt, t, target, param)
    np.testing.assert_allclose(x0_hat, x0, atol=2e-3)
    np.testing.assert_allclose(eps_hat, eps, atol=2e-3)


def test_x0_clipping_keeps_xt_consistent(key):
    s = NoiseSchedule.linear(100)
    xt = 3.0 * jax.random.normal(key, (8, 4))
    t = jnp.full((8,), 30)
    out = jax.random.normal(jax.random.fold_in(key, 1), (8, 4))
    x0, eps = gd.predict_x0_eps(s, xt, t, out, "eps", clip_x0=1.0)
    assert float(jnp.max(jnp.abs(x0))) <= 1.0
    np.testing.assert_allclose(gd.q_sample(s, x0, t, eps), xt, atol=1e-4)


@pytest.mark.parametrize("spacing", ["uniform", "quadratic"])
@pytest.mark.parametrize("S", [1, 7, 50, 100])
def test_timestep_subsequence(spacing, S):
    tau = gd.timestep_subsequence(100, S, spacing)
    assert tau.shape == (S,) and tau[-1] == 100 and tau[0] >= 1
    assert np.all(np.diff(tau) > 0)
    if S == 100:
        np.testing.assert_array_equal(tau, np.arange(1, 101))
    with pytest.raises(ValueError, match="num_steps"):
        gd.timestep_subsequence(100, 101, spacing)
