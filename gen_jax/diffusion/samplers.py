"""Samplers for the learned reverse process, each one compiled `jax.lax.scan` over timesteps.

Both samplers start from x_T ~ N(0, I) and call the denoiser through
``apply_fn(params, x_t, t, label) -> output`` (see `make_denoise_fn`). The initial noise comes from
``split(rng)[0]`` and the step-t noise from ``fold_in(split(rng)[1], t)``, so DDPM and DDIM(eta=1,
all steps) given the same key follow the same path.

Classifier-free guidance (Ho & Salimans 2022): with ``guidance_scale`` s and ``label`` given, the
network output is out_uncond + s (out_cond - out_uncond), where out_uncond uses ``label=None`` (the
null label). s = 1 is plain conditional sampling, s = 0 unconditional, s > 1 sharpens.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.diffusion.losses import DenoiseFn
from gen_jax.diffusion.process import PARAMETERIZATIONS, Parameterization, predict_x0_eps, q_posterior
from gen_jax.diffusion.schedules import NoiseSchedule, ReverseVariance

__all__ = ["timestep_subsequence", "ddpm_sample", "ddim_sample", "Spacing"]

Spacing = Literal["uniform", "quadratic"]


def timestep_subsequence(T: int, num_steps: int, spacing: Spacing = "uniform") -> np.ndarray:
    """Increasing timesteps tau_1 < ... < tau_S in 1..T for a strided (DDIM) sampler, with tau_S = T.

    'uniform': tau_i = round(i T / S); 'quadratic': tau_i = round((i / S)^2 T) (denser near t = 1, as
    in Song et al. 2021 for CIFAR-10), made strictly increasing. num_steps = T gives 1..T.

    Raises:
      ValueError: if num_steps is not in 1..T or spacing is unknown.
    """
    if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be an int in [1, T={T}]; got {num_steps!r}")
    i = np.arange(1, num_steps + 1, dtype=np.float64)
    if spacing == "uniform":
        tau = np.round(i * T / num_steps).astype(np.int64)
    elif spacing == "quadratic":
        tau = np.round((i / num_steps) ** 2 * T).astype(np.int64)
    else:
        raise ValueError(f"spacing must be 'uniform' or 'quadratic'; got {spacing!r}")
    # Strictly increasing and within [1, T]: push collisions up from the front, then cap from the end.
    tau = np.maximum(tau, 1)
    for k in range(1, num_steps):
        tau[k] = max(tau[k], tau[k - 1] + 1)
    tau[-1] = T
    for k in range(num_steps - 2, -1, -1):
        tau[k] = min(tau[k], tau[k + 1] - 1)
    return tau


def _check_common(parameterization: str, shape: tuple) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}; got {parameterization!r}")
    if len(shape) < 2:
        raise ValueError(f"shape must be (n, *data_shape); got {shape}")


def _model_output(apply_fn, params, x, t_b, label, guidance_scale):
    if label is None or guidance_scale is None:
        return apply_fn(params, x, t_b, label)
    out_c = apply_fn(params, x, t_b, label)
    out_u = apply_fn(params, x, t_b, None)
    return out_u + guidance_scale * (out_c - out_u)


def _init_noise(rng: jax.Array, shape: tuple) -> tuple[jax.Array, jax.Array]:
    k_init, k_steps = jax.random.split(rng)
    return jax.random.normal(k_init, shape, jnp.float32), k_steps


_STATIC = ("apply_fn", "shape", "parameterization", "clip_x0", "return_trajectory")


@functools.partial(jax.jit, static_argnames=_STATIC + ("variance",))
def ddpm_sample(
    apply_fn: DenoiseFn,
    params,
    schedule: NoiseSchedule,
    rng: jax.Array,
    shape: tuple[int, ...],
    *,
    label: jax.Array | None = None,
    guidance_scale: float | None = None,
    parameterization: Parameterization = "eps",
    variance: ReverseVariance = "small",
    clip_x0: float | None = None,
    return_trajectory: bool = False,
):
    """Ancestral sampling (Ho et al. 2020, Alg. 2) as one `lax.scan` over t = T..1.

    x_T ~ N(0, I);  x_{t-1} = mu_theta(x_t, t) + sigma_t z,  z ~ N(0, I) (no noise at t = 1), with
    mu_theta = coef1_t x0_hat + coef2_t x_t (the posterior mean at the predicted x_0, which for eps
    equals (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_t)).

    Args:
      apply_fn: ``apply_fn(params, x_t, t, label) -> output`` (static: build it once).
      params: denoiser parameters (e.g. EMA params).
      schedule: the noise schedule (data).
      rng: PRNG key.
      shape: (n, *data_shape), static.
      label: [n] class labels for a conditional denoiser, or None.
      guidance_scale: classifier-free guidance scale s (needs ``label``); None disables guidance.
      parameterization: what the network predicts: 'eps', 'x0' or 'v'.
      variance: sigma_t^2 = beta_tilde_t ('small') or beta_t ('large').
      clip_x0: clip x0_hat to [-clip_x0, clip_x0] at every step (e.g. 1.0 for images), or None.
      return_trajectory: also return the path.

    Returns:
      x_0 samples [n, *data_shape]; with return_trajectory, (x_0, traj) where traj = {'t': [T],
      'x': x_{t-1} [T, n, ...], 'x0_pred': x0_hat [T, n, ...]} in sampling order (t = T first).
    """
    _check_common(parameterization, shape)
    n = shape[0]
    T = schedule.num_timesteps
    if variance == "small":
        sigma2 = schedule.posterior_variance
    elif variance == "large":
        sigma2 = schedule.betas
    else:
        raise ValueError(f"variance must be 'small' or 'large'; got {variance!r}")
    x_T, k_steps = _init_noise(rng, shape)

    def step(x, t):
        t_b = jnp.full((n,), t, jnp.int32)
        out = _model_output(apply_fn, params, x, t_b, label, guidance_scale)
        x0_hat, _ = predict_x0_eps(schedule, x, t, out, parameterization, clip_x0)
        mean, _, _ = q_posterior(schedule, x0_hat, x, t)
        z = jax.random.normal(jax.random.fold_in(k_steps, t), shape, jnp.float32)
        sigma = jnp.where(t > 1, jnp.sqrt(schedule.at(sigma2, t)), 0.0)
        x_prev = mean + sigma * z
        return x_prev, ((x_prev, x0_hat) if return_trajectory else None)

    ts = jnp.arange(T, 0, -1, dtype=jnp.int32)
    x0, ys = jax.lax.scan(step, x_T, ts)
    if return_trajectory:
        return x0, {"t": ts, "x": ys[0], "x0_pred": ys[1]}
    return x0


@functools.partial(jax.jit, static_argnames=_STATIC + ("num_steps", "spacing"))
def ddim_sample(
    apply_fn: DenoiseFn,
    params,
    schedule: NoiseSchedule,
    rng: jax.Array,
    shape: tuple[int, ...],
    *,
    num_steps: int | None = None,
    eta: float = 0.0,
    spacing: Spacing = "uniform",
    label: jax.Array | None = None,
    guidance_scale: float | None = None,
    parameterization: Parameterization = "eps",
    clip_x0: float | None = None,
    return_trajectory: bool = False,
):
    """DDIM sampling (Song et al. 2021) over a timestep subsequence, as one `lax.scan`.

    For consecutive tau = t > s = tau_prev (s = 0 after the last step, alpha_bar_0 = 1)::

        sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s)
        x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s - sigma^2) eps_hat + sigma z

    eta = 0 is the deterministic DDIM sampler; eta = 1 with all T steps is DDPM ancestral sampling
    with sigma_t^2 = beta_tilde_t.

    Args:
      apply_fn, params, schedule, rng, shape, label, guidance_scale, parameterization, clip_x0,
        return_trajectory: as in `ddpm_sample`.
      num_steps: number of denoiser calls S (static; default T).
      eta: stochasticity in [0, 1] (traced: changing it does not recompile).
      spacing: 'uniform' or 'quadratic' timestep subsequence (see `timestep_subsequence`).

    Returns:
      x_0 samples [n, *data_shape]; with return_trajectory, (x_0, traj) with traj['t'] [S],
      traj['x'] [S, n, ...] (x after each step) and traj['x0_pred'] [S, n, ...].
    """
    _check_common(parameterization, shape)
    n = shape[0]
    T = schedule.num_timesteps
    tau = timestep_subsequence(T, T if num_steps is None else num_steps, spacing)
    tau_prev = np.concatenate([[0], tau[:-1]])
    pairs = jnp.asarray(np.stack([tau[::-1], tau_prev[::-1]], axis=-1), jnp.int32)  # [S, 2]
    abar = jnp.concatenate([jnp.ones((1,), jnp.float32), schedule.alpha_bars])  # abar[t], t = 0..T
    x_T, k_steps = _init_noise(rng, shape)

    def step(x, ts):
        t, s = ts[0], ts[1]
        t_b = jnp.full((n,), t, jnp.int32)
        out = _model_output(apply_fn, params, x, t_b, label, guidance_scale)
        x0_hat, eps_hat = predict_x0_eps(schedule, x, t, out, parameterization, clip_x0)
        a_t, a_s = abar[t], abar[s]
        sigma = eta * jnp.sqrt((1.0 - a_s) / (1.0 - a_t)) * jnp.sqrt(1.0 - a_t / a_s)
        z = jax.random.normal(jax.random.fold_in(k_steps, t), shape, jnp.float32)
        dir_coef = jnp.sqrt(jnp.maximum(1.0 - a_s - jnp.square(sigma), 0.0))
        x_prev = jnp.sqrt(a_s) * x0_hat + dir_coef * eps_hat + sigma * z
        return x_prev, ((x_prev, x0_hat) if return_trajectory else None)

    x0, ys = jax.lax.scan(step, x_T, pairs)
    if return_trajectory:
        return x0, {"t": pairs[:, 0], "x": ys[0], "x0_pred": ys[1]}
    return x0
