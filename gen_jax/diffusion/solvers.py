"""Fast samplers on the log-SNR axis, for every model that predicts data, noise, v or a velocity:
DPM-Solver++(2M) (Lu et al. 2022), its SDE variant, and EDM's Heun sampler with Karras sigma-spacing (Karras et
al. 2022).

Both integrate the probability-flow ODE of z = alpha x + sigma eps through a *data predictor*
``x_hat(z, lambda)`` at log-SNR lambda (alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda)); each model gives
one by ``data_predictor(params)`` -> ``(x_hat, lambda_max, lambda_min)`` whatever it predicts (eps, x0, v, a
flow-matching velocity), so one implementation serves all. Each is one ``lax.scan``; NFE = network calls.

* DPM-Solver++(2M), from lambda_min to lambda_max in S steps (NFE = S) on S levels lambda_0 < ... < lambda_{S-1}
  uniform in lambda (``spacing='log_snr'``, Lu et al.'s choice) or at Karras et al.'s sigma~ spacing (``'karras'``,
  k-diffusion's "DPM++ 2M Karras": in lambda, short steps at high noise growing towards the data),
  h_i = (lambda_i - lambda_{i-1}) / 2 (steps in log(alpha / sigma), the solver's own variable):
  z_i = (sigma_i / sigma_{i-1}) z_{i-1} - alpha_i expm1(-h_i) D_i with D_1 = x_hat_0 (first order) and
  D_i = (1 + 1/(2 r_i)) x_hat_{i-1} - 1/(2 r_i) x_hat_{i-2}, r_i = h_{i-1} / h_i; the last output is x_hat
  at lambda_max.
* SDE-DPM-Solver++(2M) (Lu et al.'s solver of the reverse diffusion SDE; diffusers' 'sde-dpmsolver++', k-diffusion's
  dpmpp_2m_sde), the same steps and D_i with fresh noise eps_i each step:
  z_i = (sigma_i / sigma_{i-1}) e^(-h_i) z_{i-1} + alpha_i (1 - e^(-2 h_i)) D_i + sigma_i sqrt(1 - e^(-2 h_i)) eps_i.
  Its noise corrects the denoiser's errors as an ancestral chain does (the ODE carries them to the end).
* EDM Heun, in x~ = z / alpha with sigma~ = exp(-lambda / 2) (the variance-exploding form): dx~/dsigma~ =
  (x~ - x_hat) / sigma~ by Heun's method on Karras et al.'s spacing sigma~_i = (smax^(1/rho) + i/(N-1)
  (smin^(1/rho) - smax^(1/rho)))^rho, i < N, then sigma~_N = 0 by an Euler step (NFE = 2N - 1). With
  ``churn`` = S_churn > 0 it is EDM's stochastic sampler (Algorithm 2): before each step whose sigma~_i lies in
  ``churn_range``, noise raises sigma~_i to sigma^_i = (1 + gamma) sigma~_i (gamma = min(S_churn / N, sqrt 2 - 1),
  never above the first level), x~ += sqrt(sigma^_i^2 - sigma~_i^2) S_noise eps, and the Heun step starts from
  sigma^_i: the same NFE, fresh noise that corrects the denoiser's errors as an ancestral chain does.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from gen_jax.diffusion.log_snr import alpha_sigma

__all__ = ["FAST_SAMPLERS", "LOG_SNR_SPACINGS", "fast_sample", "dpm_solver_pp_2m", "dpm_solver_pp_2m_sde",
           "edm_heun", "karras_sigmas", "solver_log_snrs", "invert_decreasing"]

Array = jax.Array
DataPredictor = Callable[[Array, Array], Array]
FAST_SAMPLERS = ("dpm_solver_pp_2m", "dpm_solver_pp_2m_sde", "edm_heun")
LOG_SNR_SPACINGS = ("log_snr", "karras")  # the DPM-Solver++ samplers' level spacings (EDM Heun: always Karras)


def invert_decreasing(f: Callable[[Array], Array], y: Array, lo: float = 0.0, hi: float = 1.0,
                      iterations: int = 40) -> Array:
    """t in [lo, hi] with f(t) = y for a decreasing f, by bisection (elementwise; y of any shape)."""
    def body(_, bounds):
        a, b = bounds
        mid = 0.5 * (a + b)
        above = f(mid) > y  # f decreasing: the root lies right of mid
        return jnp.where(above, mid, a), jnp.where(above, b, mid)

    y = jnp.asarray(y, jnp.float32)
    a, b = jax.lax.fori_loop(0, iterations, body, (jnp.full_like(y, lo), jnp.full_like(y, hi)))
    return 0.5 * (a + b)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> Array:
    """Karras et al.'s n noise levels from sigma_max down to sigma_min (then 0 is appended by the sampler)."""
    i = jnp.arange(n, dtype=jnp.float32) / max(n - 1, 1)
    return (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def solver_log_snrs(log_snr_max: float, log_snr_min: float, n: int, spacing: str = "log_snr",
                    rho: float = 7.0) -> Array:
    """A solver's ``n`` log-SNR levels, increasing from ``log_snr_min`` to ``log_snr_max``: uniform in lambda
    (``spacing='log_snr'``) or Karras et al.'s ``n`` levels of sigma~ = exp(-lambda / 2) with exponent ``rho``
    (``'karras'``)."""
    if spacing not in LOG_SNR_SPACINGS:
        raise ValueError(f"spacing must be one of {LOG_SNR_SPACINGS}; got {spacing!r}")
    if spacing == "log_snr":
        return jnp.linspace(log_snr_min, log_snr_max, n, dtype=jnp.float32)
    s_max, s_min = jnp.exp(-0.5 * jnp.float32(log_snr_min)), jnp.exp(-0.5 * jnp.float32(log_snr_max))
    return -2.0 * jnp.log(karras_sigmas(s_min, s_max, n, rho))


def _check(num_steps: int, minimum: int) -> None:
    if not isinstance(num_steps, int) or num_steps < minimum:
        raise ValueError(f"num_steps must be an int >= {minimum}; got {num_steps!r}")


@functools.partial(jax.jit, static_argnames=("x_hat", "shape", "num_steps", "spacing"))
def dpm_solver_pp_2m(x_hat: DataPredictor, key: Array, shape: tuple[int, ...], log_snr_max: float,
                     log_snr_min: float, num_steps: int = 20, spacing: str = "log_snr") -> Array:
    """DPM-Solver++(2M) with ``num_steps`` network calls from ``log_snr_min`` (where z ~ N(0, I)) to
    ``log_snr_max`` on :func:`solver_log_snrs`' levels of ``spacing``; returns the data prediction at
    ``log_snr_max`` [shape]."""
    return _dpm_solver_pp_2m(x_hat, key, shape, log_snr_max, log_snr_min, num_steps, spacing, stochastic=False)


@functools.partial(jax.jit, static_argnames=("x_hat", "shape", "num_steps", "spacing"))
def dpm_solver_pp_2m_sde(x_hat: DataPredictor, key: Array, shape: tuple[int, ...], log_snr_max: float,
                         log_snr_min: float, num_steps: int = 20, spacing: str = "log_snr") -> Array:
    """SDE-DPM-Solver++(2M): :func:`dpm_solver_pp_2m`'s steps on the reverse diffusion SDE, fresh noise at each
    (the module docstring); ``num_steps`` network calls."""
    return _dpm_solver_pp_2m(x_hat, key, shape, log_snr_max, log_snr_min, num_steps, spacing, stochastic=True)


def _dpm_solver_pp_2m(x_hat, key, shape, log_snr_max, log_snr_min, num_steps, spacing, stochastic):
    _check(num_steps, 1)
    lam = solver_log_snrs(log_snr_max, log_snr_min, num_steps, spacing)
    z = jax.random.normal(key, shape, jnp.float32)
    if num_steps == 1:
        return x_hat(z, lam[0])

    def step(carry, i):
        z, x_prev, h_prev = carry
        l0, l1 = lam[i], lam[i + 1]
        x0 = x_hat(z, l0)
        h = 0.5 * (l1 - l0)  # in log(alpha / sigma), half the log-SNR
        r = h_prev / h
        D = jnp.where(i == 0, x0, (1 + 0.5 / r) * x0 - (0.5 / r) * x_prev)
        (_, s0), (a1, s1) = alpha_sigma(l0), alpha_sigma(l1)
        if stochastic:
            noise = jax.random.normal(jax.random.fold_in(key, i + 1), shape, jnp.float32)
            m = -jnp.expm1(-2.0 * h)  # 1 - e^(-2h)
            z = (s1 / s0) * jnp.exp(-h) * z + a1 * m * D + s1 * jnp.sqrt(m) * noise
        else:
            z = (s1 / s0) * z - a1 * jnp.expm1(-h) * D
        return (z, x0, h), None

    (z, _, _), _ = jax.lax.scan(step, (z, jnp.zeros(shape, jnp.float32), jnp.float32(1.0)), jnp.arange(num_steps - 1))
    return x_hat(z, lam[-1])


@functools.partial(jax.jit, static_argnames=("x_hat", "shape", "num_steps", "churn", "churn_range", "churn_noise"))
def edm_heun(x_hat: DataPredictor, key: Array, shape: tuple[int, ...], log_snr_max: float, log_snr_min: float,
             num_steps: int = 18, rho: float = 7.0, churn: float = 0.0,
             churn_range: tuple[float, float] = (0.0, math.inf), churn_noise: float = 1.0) -> Array:
    """EDM's Heun sampler on ``num_steps`` Karras noise levels between those of ``log_snr_min`` and
    ``log_snr_max`` (NFE = 2 num_steps - 1): deterministic with ``churn`` 0, else EDM's stochastic sampler with
    S_churn = ``churn``, (S_tmin, S_tmax) = ``churn_range`` (in sigma~ = exp(-lambda / 2)) and S_noise =
    ``churn_noise``; returns the sample in data space [shape]."""
    _check(num_steps, 2)
    if not churn >= 0.0:
        raise ValueError(f"churn must be >= 0; got {churn!r}")
    s_max, s_min = jnp.exp(-0.5 * jnp.float32(log_snr_min)), jnp.exp(-0.5 * jnp.float32(log_snr_max))
    sig = jnp.concatenate([karras_sigmas(s_min, s_max, num_steps, rho), jnp.zeros((1,), jnp.float32)])
    a_start, _ = alpha_sigma(jnp.float32(log_snr_min))
    x = jax.random.normal(key, shape, jnp.float32) / a_start  # z ~ N(0, I) in x~ = z / alpha

    def denoise(x, s):  # x_hat at x~ = x with sigma~ = s > 0
        lam = -2.0 * jnp.log(s)
        a, _ = alpha_sigma(lam)
        return x_hat(a * x, lam)

    gamma = min(churn / num_steps, math.sqrt(2.0) - 1.0)

    def step(x, i):
        s0, s1 = sig[i], sig[i + 1]
        if churn > 0:  # EDM's Algorithm 2: raise the noise level to s_hat by fresh noise, then step from there
            g = jnp.where((s0 >= churn_range[0]) & (s0 <= churn_range[1]), gamma, 0.0)
            s_hat = jnp.minimum(s0 * (1.0 + g), sig[0])
            noise = jax.random.normal(jax.random.fold_in(key, i + 1), shape, jnp.float32)
            x = x + jnp.sqrt(jnp.square(s_hat) - jnp.square(s0)) * churn_noise * noise
            s0 = s_hat
        d = (x - denoise(x, s0)) / s0
        x1 = x + (s1 - s0) * d
        # Heun's correction except into sigma~ = 0 (where the slope is undefined): there the Euler step
        heun = lambda: x + 0.5 * (s1 - s0) * (d + (x1 - denoise(x1, s1)) / s1)  # noqa: E731
        return jax.lax.cond(s1 > 0, heun, lambda: x1), None

    x, _ = jax.lax.scan(step, x, jnp.arange(num_steps))
    return x


def fast_sample(model, params, key: Array, n: int, sampler: str = "dpm_solver_pp_2m", num_steps: int = 20,
                labels: Array | None = None, clip_x: float | None = None, churn: float = 0.0,
                spacing: str | None = None) -> Array:
    """``n`` samples in ``model``'s space by a fast sampler on its ``data_predictor(params, labels)`` (class-
    conditional models: ``labels`` default to 0, 1, ... cycling over the classes); ``churn``: EDM's S_churn
    (``edm_heun`` only); ``spacing``: the DPM-Solver++ samplers' levels, one of :data:`LOG_SNR_SPACINGS`
    (default 'log_snr'; ``edm_heun`` is always on Karras levels)."""
    if sampler not in FAST_SAMPLERS:
        raise ValueError(f"fast sampler must be one of {FAST_SAMPLERS}; got {sampler!r}")
    if churn and sampler != "edm_heun":
        raise ValueError(f"churn is an option of 'edm_heun' (EDM's stochastic sampler), not of {sampler!r}")
    if spacing is not None and sampler == "edm_heun":
        raise ValueError("spacing is an option of the DPM-Solver++ samplers; 'edm_heun' is always on Karras levels")
    if model.num_classes is not None and labels is None:
        labels = jnp.arange(n, dtype=jnp.int32) % model.num_classes
    # compiled once per model and (sampler, num_steps, n, clip_x, churn, spacing), cached on the model (models holding
    # arrays, such as a DDPM's schedule, are not hashable, so the model cannot be a static argument)
    cache = model.__dict__.setdefault("_fast_sample_cache", {})
    spec = (sampler, int(num_steps), int(n), None if clip_x is None else float(clip_x), float(churn),
            spacing or "log_snr")
    if spec not in cache:
        cache[spec] = jax.jit(functools.partial(_fast_sample, model, *spec))
    return cache[spec](params, key, labels)


def _fast_sample(model, sampler, num_steps, n, clip_x, churn, spacing, params, key, labels):
    x_hat, lmax, lmin = model.data_predictor(params, labels)
    if clip_x is not None:
        x_hat = _clipped(x_hat, clip_x)
    shape = (n, *model.data_shape)
    if sampler == "dpm_solver_pp_2m":
        return dpm_solver_pp_2m(x_hat, key, shape, lmax, lmin, num_steps=num_steps, spacing=spacing)
    if sampler == "dpm_solver_pp_2m_sde":
        return dpm_solver_pp_2m_sde(x_hat, key, shape, lmax, lmin, num_steps=num_steps, spacing=spacing)
    return edm_heun(x_hat, key, shape, lmax, lmin, num_steps=num_steps, churn=churn)


def _clipped(x_hat: DataPredictor, c: float) -> DataPredictor:
    return lambda z, lam: jnp.clip(x_hat(z, lam), -c, c)
