"""The setting of the diffusion derivations: the linear schedule of Ho et al., a 2-D mixture of 4 Gaussians
as data and its exact noise predictor (see :mod:`experiments.derivations.diffusion`)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from experiments.derivations.common import (
    to_f64,
)
from gen_jax import diffusion

FAMILY = "diffusion"
T_MAIN = 1000
MEANS = np.array([[-1.0, -0.5], [1.0, -0.8], [0.0, 1.0], [0.9, 0.9]])
STDS = np.array([0.15, 0.25, 0.2, 0.1])
WEIGHTS = np.array([0.35, 0.25, 0.25, 0.15])
PROJECTIONS = np.array([[1.0, 0.0], [0.0, 1.0], [math.sqrt(0.5), math.sqrt(0.5)], [math.sqrt(0.5), -math.sqrt(0.5)]])
SCHEDULE_F32_TOL = 1e-6  # relative error of float32-stored schedule coefficients (~6e-8) with margin


@functools.lru_cache(maxsize=None)
def schedule(T: int = T_MAIN, beta_start: float = 1e-4, beta_end: float = 0.02) -> diffusion.NoiseSchedule:
    """The library's linear schedule, cast to float64."""
    return to_f64(diffusion.NoiseSchedule.linear(T, beta_start, beta_end))


def independent_coefficients(sched: diffusion.NoiseSchedule) -> dict[str, np.ndarray]:
    """alpha_t, alpha_bar_t = prod_{s<=t} (1 - beta_s), alpha_bar_{t-1} from the betas alone (numpy)."""
    betas = np.asarray(sched.betas, np.float64)
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    return {"betas": betas, "alphas": alphas, "abar": abar, "abar_prev": np.concatenate([[1.0], abar[:-1]])}


def denoiser_params(sched: diffusion.NoiseSchedule, gain: float = 1.0, shift: float = 0.0) -> dict:
    """Parameters of :func:`gmm_eps`: the mixture, the schedule's alpha_bar, and a distortion (in the
    schedule's float dtype)."""
    dtype = sched.alpha_bars.dtype
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), {
        "alpha_bars": sched.alpha_bars, "means": MEANS, "stds": STDS, "log_w": np.log(WEIGHTS),
        "gain": np.asarray(gain), "shift": np.asarray(shift)})


def gmm_eps(params: dict, x_t: jax.Array, t: jax.Array, label=None) -> jax.Array:
    """gain * eps*(x_t, t) + shift, eps* the exact E[eps | x_t] for the mixture data.

    Follows the library's denoiser protocol ``apply_fn(params, x_t [B, D], t [B], label) -> [B, D]``.
    """
    del label
    return params["gain"] * mixture_eps(params, x_t, jnp.take(params["alpha_bars"], t - 1)) + params["shift"]


def mixture_eps(params: dict, x_t: jax.Array, abar: jax.Array, one_minus_abar: jax.Array | None = None) -> jax.Array:
    """The exact E[eps | x_t] for the mixture data when x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps, abar [B]
    (discrete or continuous time alike; ``one_minus_abar``, when given, is 1 - abar computed accurately, or
    any noise variance: x_t = sqrt(abar) x_0 + sqrt(one_minus_abar) eps)."""
    return mixture_posterior(params, x_t, abar, one_minus_abar)[1]


def mixture_posterior(params: dict, x_t: jax.Array, abar: jax.Array,
                      one_minus_abar: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(E[x_0 | x_t], E[eps | x_t]) for the mixture data (see :func:`mixture_eps`)."""
    if one_minus_abar is None:
        one_minus_abar = 1.0 - abar
    sa = jnp.sqrt(abar)[:, None, None]  # [B, 1, 1]
    var0 = jnp.square(params["stds"])[None, :]  # [1, K]
    var_t = abar[:, None] * var0 + one_minus_abar[:, None]  # [B, K]: variance of component k at time t
    mean_t = sa * params["means"][None]  # [B, K, D]
    diff = x_t[:, None, :] - mean_t  # [B, K, D]
    d = x_t.shape[-1]
    log_r = params["log_w"][None, :] - 0.5 * (jnp.sum(jnp.square(diff), -1) / var_t + d * jnp.log(2 * jnp.pi * var_t))
    r = jax.nn.softmax(log_r, axis=-1)  # [B, K] responsibilities
    x0_k = params["means"][None] + (sa[:, :, 0] * var0 / var_t)[:, :, None] * diff  # E[x_0 | x_t, k]
    x0 = jnp.sum(r[:, :, None] * x0_k, axis=1)  # [B, D]
    return x0, (x_t - jnp.sqrt(abar)[:, None] * x0) / jnp.sqrt(one_minus_abar)[:, None]


def data_points() -> np.ndarray:
    """Four fixed data points x_0 [4, 2] (one near each mixture mean), rounded to float32."""
    x = MEANS + np.array([[0.1, -0.05], [-0.2, 0.1], [0.05, 0.15], [0.0, -0.08]])
    return x.astype(np.float32).astype(np.float64)


def mixture_cdf(u: np.ndarray):
    """CDF of the data projected on the unit vector u: a 1D mixture of Gaussians (numpy)."""
    m = MEANS @ u

    def cdf(y):
        return np.sum(WEIGHTS[None] * scipy.special.ndtr((y[:, None] - m[None]) / STDS[None]), axis=1)

    return cdf
