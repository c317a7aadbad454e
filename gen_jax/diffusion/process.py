"""The forward process q, its posterior, and conversions between eps / x0 / v predictions.

Timesteps are integers in the math convention t in {1..T} (see `schedules`). ``t`` is either a
scalar (one timestep for all of ``x``) or an array matching the leading (batch) axes of ``x``, e.g.
``t`` [B] with ``x`` [B, H, W, C]; coefficients are broadcast over the remaining (event) axes.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from gen_jax.diffusion.schedules import NoiseSchedule

__all__ = [
    "Parameterization",
    "PARAMETERIZATIONS",
    "forward_step",
    "q_sample",
    "q_mean_variance",
    "q_posterior",
    "x0_from_eps",
    "eps_from_x0",
    "v_from_x0_eps",
    "x0_from_v",
    "eps_from_v",
    "predict_x0_eps",
    "prediction_target",
]

Parameterization = Literal["eps", "x0", "v"]
PARAMETERIZATIONS = ("eps", "x0", "v")


def _bcast(coef: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes per-example coefficients ``coef`` (shape = leading axes of x) to broadcast over x."""
    coef = jnp.asarray(coef)
    if coef.ndim > x.ndim or x.shape[: coef.ndim] != coef.shape:
        raise ValueError(
            f"timestep array of shape {coef.shape} must be a scalar or match the leading axes of x "
            f"with shape {x.shape}"
        )
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


def _coef(schedule: NoiseSchedule, values: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
    return _bcast(schedule.at(values, t), x)


def forward_step(schedule: NoiseSchedule, x_prev: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """The seed's forward step: x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps, eps ~ N(0, I).

    Args:
      schedule: the noise schedule.
      x_prev: x_{t-1}.
      t: timestep(s) in 1..T (scalar or leading axes of x_prev).
      eps: standard normal noise, same shape as x_prev.

    Returns:
      x_t, same shape as x_prev.
    """
    beta = _coef(schedule, schedule.betas, t, x_prev)
    return jnp.sqrt(1.0 - beta) * x_prev + jnp.sqrt(beta) * eps


def q_mean_variance(schedule: NoiseSchedule, x0: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).

    Returns:
      (mean, variance): mean has the shape of x0; variance broadcasts against it.
    """
    mean = _coef(schedule, schedule.sqrt_alpha_bars, t, x0) * x0
    var = 1.0 - _coef(schedule, schedule.alpha_bars, t, x0)
    return mean, var


def q_sample(schedule: NoiseSchedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """Closed-form sample of q(x_t | x_0): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.

    This is the seed's one-step forward process iterated t times (products of Gaussians).

    Args:
      schedule: the noise schedule.
      x0: clean data x_0.
      t: timestep(s) in 1..T (scalar or leading axes of x0).
      eps: standard normal noise, same shape as x0.
    """
    return (
        _coef(schedule, schedule.sqrt_alpha_bars, t, x0) * x0
        + _coef(schedule, schedule.sqrt_one_minus_alpha_bars, t, x0) * eps
    )


def q_posterior(
    schedule: NoiseSchedule, x0: jax.Array, xt: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Gaussian posterior q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I).

    mu_tilde_t = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t) x_0
                 + (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t) x_t,
    beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t).

    Returns:
      (mean, variance, log_variance_clipped); variance and log variance broadcast against mean. At
      t = 1 the variance is 0 and the log variance is clipped to log beta_tilde_2.
    """
    mean = (
        _coef(schedule, schedule.posterior_mean_coef1, t, xt) * x0
        + _coef(schedule, schedule.posterior_mean_coef2, t, xt) * xt
    )
    var = _coef(schedule, schedule.posterior_variance, t, xt)
    logvar = _coef(schedule, schedule.posterior_log_variance_clipped, t, xt)
    return mean, var, logvar


# ---------------------------------------------------------------------- parameterizations
def x0_from_eps(schedule: NoiseSchedule, xt: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
    return (xt - _coef(schedule, schedule.sqrt_one_minus_alpha_bars, t, xt) * eps) / _coef(
        schedule, schedule.sqrt_alpha_bars, t, xt
    )


def eps_from_x0(schedule: NoiseSchedule, xt: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t)."""
    return (xt - _coef(schedule, schedule.sqrt_alpha_bars, t, xt) * x0) / _coef(
        schedule, schedule.sqrt_one_minus_alpha_bars, t, xt
    )


def v_from_x0_eps(schedule: NoiseSchedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """Velocity (Salimans & Ho 2022): v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0."""
    return (
        _coef(schedule, schedule.sqrt_alpha_bars, t, x0) * eps
        - _coef(schedule, schedule.sqrt_one_minus_alpha_bars, t, x0) * x0
    )


def x0_from_v(schedule: NoiseSchedule, xt: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v."""
    return (
        _coef(schedule, schedule.sqrt_alpha_bars, t, xt) * xt
        - _coef(schedule, schedule.sqrt_one_minus_alpha_bars, t, xt) * v
    )


def eps_from_v(schedule: NoiseSchedule, xt: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v."""
    return (
        _coef(schedule, schedule.sqrt_one_minus_alpha_bars, t, xt) * xt
        + _coef(schedule, schedule.sqrt_alpha_bars, t, xt) * v
    )


def _check_parameterization(parameterization: str) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}; got {parameterization!r}")


def predict_x0_eps(
    schedule: NoiseSchedule,
    xt: jax.Array,
    t: jax.Array,
    model_output: jax.Array,
    parameterization: Parameterization = "eps",
    clip_x0: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Converts a denoiser output to the pair (x0_hat, eps_hat) consistent with x_t.

    Args:
      schedule: the noise schedule.
      xt: the noisy input x_t.
      t: timestep(s) in 1..T.
      model_output: the denoiser's prediction of eps, x_0 or v (per ``parameterization``).
      parameterization: 'eps', 'x0' or 'v'.
      clip_x0: if given, x0_hat is clipped to [-clip_x0, clip_x0] and eps_hat recomputed from the
        clipped x0_hat, so that x_t = sqrt(alpha_bar_t) x0_hat + sqrt(1 - alpha_bar_t) eps_hat holds.

    Returns:
      (x0_hat, eps_hat), each with the shape of xt.
    """
    _check_parameterization(parameterization)
    if parameterization == "eps":
        eps = model_output
        x0 = x0_from_eps(schedule, xt, t, eps)
    elif parameterization == "x0":
        x0 = model_output
        eps = eps_from_x0(schedule, xt, t, x0)
    else:
        x0 = x0_from_v(schedule, xt, t, model_output)
        eps = eps_from_v(schedule, xt, t, model_output)
    if clip_x0 is not None:
        x0 = jnp.clip(x0, -clip_x0, clip_x0)
        eps = eps_from_x0(schedule, xt, t, x0)
    return x0, eps


def prediction_target(
    schedule: NoiseSchedule,
    x0: jax.Array,
    t: jax.Array,
    eps: jax.Array,
    parameterization: Parameterization = "eps",
) -> jax.Array:
    """The regression target of a denoiser: eps, x_0 or v = sqrt(alpha_bar) eps - sqrt(1-alpha_bar) x_0."""
    _check_parameterization(parameterization)
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    return v_from_x0_eps(schedule, x0, t, eps)
