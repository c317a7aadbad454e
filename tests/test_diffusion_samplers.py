"""Samplers with the closed-form optimal denoiser of a 2D Gaussian mixture: DDPM and DDIM reproduce the
mixture; DDIM(eta=1, all steps) is DDPM with sigma^2 = beta_tilde; eps/x0/v drive identical paths;
guidance and clipping are wired right; each sampler traces once whatever the number of steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gen_jax.diffusion as gd
from gen_jax.diffusion import NoiseSchedule

T = 200
SCHEDULE = NoiseSchedule.linear(T, 1e-4 * 1000 / T, 0.02 * 1000 / T)  # abar_T ~ 4e-5
MIX = {
    "means": jnp.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5], [0.0, -2.0]]),
    "log_w": jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4])),
    "std": jnp.float32(0.25),
}
N = 4000


def _optimal_eps(params, x_t, t, schedule):
    """eps*(x_t) = -sqrt(1 - abar_t) grad log p_t(x_t), p_t = sum_k w_k N(sqrt(abar_t) mu_k, (abar_t s^2 + 1 - abar_t) I)."""
    abar = schedule.at(schedule.alpha_bars, t)[:, None, None]  # [B, 1, 1]
    var = abar * params["std"] ** 2 + (1.0 - abar)  # [B, 1, 1]
    diff = x_t[:, None, :] - jnp.sqrt(abar) * params["means"][None]  # [B, K, 2]
    logits = params["log_w"][None] - 0.5 * jnp.sum(diff**2, -1) / var[:, :, 0]  # [B, K]
    resp = jax.nn.softmax(logits, axis=-1)[:, :, None]
    score = -jnp.sum(resp * diff / var, axis=1)  # [B, 2]
    return -jnp.sqrt(1.0 - abar[:, :, 0]) * score


def eps_fn(params, x_t, t, label):
    return _optimal_eps(params, x_t, t, SCHEDULE)


def x0_fn(params, x_t, t, label):
    return gd.x0_from_eps(SCHEDULE, x_t, t, _optimal_eps(params, x_t, t, SCHEDULE))


def v_fn(params, x_t, t, label):
    eps = _optimal_eps(params, x_t, t, SCHEDULE)
    return gd.v_from_x0_eps(SCHEDULE, gd.x0_from_eps(SCHEDULE, x_t, t, eps), t, eps)


def _check_mixture(x, tol_std=0.15):
    """Component weights within 4 binomial SE; per-component means within 4 SE + 0.02; stds within tol_std."""
    x = np.asarray(x, np.float64)
    means, w, std = np.asarray(MIX["means"]), np.exp(np.asarray(MIX["log_w"])), float(MIX["std"])
    assign = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), -1)
    far = np.min(np.sqrt(((x[:, None, :] - means[None]) ** 2).sum(-1)), -1) > 5 * std
    assert far.mean() < 0.01, f"{far.mean():.3f} of samples are off every mode"
    for k in range(4):
        xk = x[assign == k]
        frac = xk.shape[0] / x.shape[0]
        assert abs(frac - w[k]) < 4 * np.sqrt(w[k] * (1 - w[k]) / x.shape[0]), (k, frac, w[k])
        assert np.all(np.abs(xk.mean(0) - means[k]) < 4 * std / np.sqrt(xk.shape[0]) + 0.02), (k, xk.mean(0))
        np.testing.assert_allclose(xk.std(0), std, rtol=tol_std)


def test_ddpm_reproduces_the_mixture():
    x = gd.ddpm_sample(eps_fn, MIX, SCHEDULE, jax.random.key(0), (N, 2), variance="small")
    _check_mixture(x)
    x = gd.ddpm_sample(eps_fn, MIX, SCHEDULE, jax.random.key(1), (N, 2), variance="large")
    _check_mixture(x)


@pytest.mark.parametrize("spacing,steps", [("uniform", 100), ("quadratic", 50)])
def test_ddim_reproduces_the_mixture(spacing, steps):
    x = gd.ddim_sample(eps_fn, MIX, SCHEDULE, jax.random.key(2), (N, 2), num_steps=steps, eta=0.0, spacing=spacing)
    _check_mixture(x)


def test_ddim_eta1_all_steps_is_ddpm_small_variance():
    """Same key: the same path (up to float error); other keys: same law (moments within 4 SE)."""
    key = jax.random.key(3)
    a = gd.ddpm_sample(eps_fn, MIX, SCHEDULE, key, (N, 2), variance="small")
    b = gd.ddim_sample(eps_fn, MIX, SCHEDULE, key, (N, 2), num_steps=T, eta=1.0)
    np.testing.assert_allclose(a, b, atol=2e-3)
    c = np.asarray(gd.ddim_sample(eps_fn, MIX, SCHEDULE, jax.random.key(4), (N, 2), num_steps=T, eta=1.0), np.float64)
    a = np.asarray(a, np.float64)
    se = np.sqrt(a.var(0) / N + c.var(0) / N)
    assert np.all(np.abs(a.mean(0) - c.mean(0)) < 4 * se)
    _check_mixture(c)
    # eta=0 differs from eta=1 (the noise really enters).
    d = gd.ddim_sample(eps_fn, MIX, SCHEDULE, key, (N, 2), num_steps=T, eta=0.0)
    assert float(jnp.mean(jnp.abs(d - b))) > 0.05


def test_eps_x0_v_parameterizations_give_the_same_samples():
    """The same optimal denoiser written as an eps, x0 or v predictor drives the same (stochastic) path."""
    key = jax.random.key(5)

    def run(fn, p):
        return gd.ddim_sample(fn, MIX, SCHEDULE, key, (256, 2), num_steps=20, eta=0.5, parameterization=p)

    ref = run(eps_fn, "eps")
    np.testing.assert_allclose(run(x0_fn, "x0"), ref, atol=5e-3)
    np.testing.assert_allclose(run(v_fn, "v"), ref, atol=5e-3)


def test_sampler_traces_once_regardless_of_steps():
    """One trace of the denoiser for 1000 DDPM steps / 1000 DDIM steps; new keys, a new schedule of
    the same T, or a new eta do not retrace."""
    traces = []

    def counting_eps(params, x_t, t, label):
        traces.append(1)
        return jnp.zeros_like(x_t)

    s1000 = NoiseSchedule.linear(1000)
    gd.ddpm_sample(counting_eps, None, s1000, jax.random.key(0), (8, 2))
    assert len(traces) == 1
    gd.ddpm_sample(counting_eps, None, NoiseSchedule.cosine(1000), jax.random.key(1), (8, 2))
    assert len(traces) == 1
    gd.ddim_sample(counting_eps, None, s1000, jax.random.key(0), (8, 2), num_steps=1000, eta=0.0)
    gd.ddim_sample(counting_eps, None, s1000, jax.random.key(2), (8, 2), num_steps=1000, eta=0.7)
    assert len(traces) == 2


def test_guidance_combines_conditional_and_unconditional_outputs():
    """With label=None meaning 'null label', s=0 gives the unconditional sampler, s=1 the conditional
    one, and s=2 the extrapolation 2 out_c - out_u, whose samples are again checked in closed form."""

    def labelled(params, x_t, t, label):  # conditional: shift the prediction by +label; unconditional: 0
        shift = 0.0 if label is None else label.astype(jnp.float32)[:, None]
        return 0.1 * x_t + 0.01 * shift

    s = NoiseSchedule.linear(20, 1e-3, 0.2)
    key, n = jax.random.key(6), 16
    label = jnp.arange(n) % 3
    run = lambda **kw: gd.ddim_sample(labelled, None, s, key, (n, 2), **kw)  # noqa: E731
    np.testing.assert_allclose(run(label=label, guidance_scale=0.0), run(), atol=1e-5)
    np.testing.assert_allclose(run(label=label, guidance_scale=1.0), run(label=label), atol=1e-5)

    def extrapolated(params, x_t, t, label):
        return 0.1 * x_t + 0.02 * label.astype(jnp.float32)[:, None]

    np.testing.assert_allclose(run(label=label, guidance_scale=2.0),
                               gd.ddim_sample(extrapolated, None, s, key, (n, 2), label=label), atol=1e-5)


def test_x0_clipping_bounds_the_samples():
    far = dict(MIX, means=3.0 * MIX["means"])
    x = gd.ddpm_sample(eps_fn, far, SCHEDULE, jax.random.key(7), (N, 2), clip_x0=1.0)
    assert float(jnp.max(jnp.abs(x))) <= 1.0 + 1e-6
    x = gd.ddpm_sample(eps_fn, far, SCHEDULE, jax.random.key(7), (N, 2))  # (compiled above: cache hit)
    assert float(jnp.max(jnp.abs(x))) > 4.0


def test_trajectory_shapes():
    x0, traj = gd.ddim_sample(eps_fn, MIX, SCHEDULE, jax.random.key(8), (4, 2), num_steps=10, return_trajectory=True)
    assert traj["x"].shape == (10, 4, 2) and traj["x0_pred"].shape == (10, 4, 2)
    np.testing.assert_array_equal(traj["t"], gd.timestep_subsequence(T, 10)[::-1])
    np.testing.assert_allclose(traj["x"][-1], x0)
