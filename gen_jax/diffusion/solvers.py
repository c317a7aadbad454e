"""Fast deterministic samplers on the log-SNR axis, for every model that predicts data, noise, v or a velocity:
DPM-Solver++(2M) (Lu et al. 2022) and EDM's Heun sampler with Karras sigma-spacing (Karras et al. 2022).

Both integrate the probability-flow ODE of z = alpha x + sigma eps through a *data predictor*
``x_hat(z, lambda)`` at log-SNR lambda (alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda)); each model gives
one by ``data_predictor(params)`` -> ``(x_hat, lambda_max, lambda_min)`` whatever it predicts (eps, x0, v, a
flow-matching velocity), so one implementation serves all. Each is one ``lax.scan``; NFE = network calls.

* DPM-Solver++(2M), from lambda_min to lambda_max in S steps (NFE = S), h_i = (lambda_i - lambda_{i-1}) / 2
  (steps in log(alpha / sigma), the solver's own variable):
  z_i = (sigma_i / sigma_{i-1}) z_{i-1} - alpha_i expm1(-h_i) D_i with D_1 = x_hat_0 (first order) and
  D_i = (1 + 1/(2 r_i)) x_hat_{i-1} - 1/(2 r_i) x_hat_{i-2}, r_i = h_{i-1} / h_i; the last output is x_hat
  at lambda_max.
* EDM Heun, in x~ = z / alpha with sigma~ = exp(-lambda / 2) (the variance-exploding form): dx~/dsigma~ =
  (x~ - x_hat) / sigma~ by Heun's method on Karras et al.'s spacing sigma~_i = (smax^(1/rho) + i/(N-1)
  (smin^(1/rho) - smax^(1/rho)))^rho, i < N, then sigma~_N = 0 by an Euler step (NFE = 2N - 1).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from gen_jax.diffusion.log_snr import alpha_sigma

__all__ = ["FAST_SAMPLERS", "fast_sample", "dpm_solver_pp_2m", "edm_heun", "karras_sigmas", "invert_decreasing"]

Array = jax.Array
DataPredictor = Callable[[Array, Array], Array]
FAST_SAMPLERS = ("dpm_solver_pp_2m", "edm_heun")


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


def _check(num_steps: int, minimum: int) -> None:
    if not isinstance(num_steps, int) or num_steps < minimum:
        raise ValueError(f"num_steps must be an int >= {minimum}; got {num_steps!r}")


@functools.partial(jax.jit, static_argnames=("x_hat", "shape", "num_steps"))
def dpm_solver_pp_2m(x_hat: DataPredictor, key: Array, shape: tuple[int, ...], log_snr_max: float,
                     log_snr_min: float, num_steps: int = 20) -> Array:
    """DPM-Solver++(2M) with ``num_steps`` network calls, uniform in lambda from ``log_snr_min`` (where z ~ N(0, I))
    to ``log_snr_max``; returns the data prediction at ``log_snr_max`` [shape]."""
    _check(num_steps, 1)
    lam = jnp.linspace(log_snr_min, log_snr_max, num_steps, dtype=jnp.float32)
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
        return ((s1 / s0) * z - a1 * jnp.expm1(-h) * D, x0, h), None

    (z, _, _), _ = jax.lax.scan(step, (z, jnp.zeros(shape, jnp.float32), jnp.float32(1.0)), jnp.arange(num_steps - 1))
    return x_hat(z, lam[-1])


@functools.partial(jax.jit, static_argnames=("x_hat", "shape", "num_steps"))
def edm_heun(x_hat: DataPredictor, key: Array, shape: tuple[int, ...], log_snr_max: float, log_snr_min: float,
             num_steps: int = 18, rho: float = 7.0) -> Array:
    """EDM's deterministic Heun sampler on ``num_steps`` Karras noise levels between those of ``log_snr_min``
    and ``log_snr_max`` (NFE = 2 num_steps - 1); returns the sample in data space [shape]."""
    _check(num_steps, 2)
    s_max, s_min = jnp.exp(-0.5 * jnp.float32(log_snr_min)), jnp.exp(-0.5 * jnp.float32(log_snr_max))
    sig = jnp.concatenate([karras_sigmas(s_min, s_max, num_steps, rho), jnp.zeros((1,), jnp.float32)])
    a_start, _ = alpha_sigma(jnp.float32(log_snr_min))
    x = jax.random.normal(key, shape, jnp.float32) / a_start  # z ~ N(0, I) in x~ = z / alpha

    def denoise(x, s):  # x_hat at x~ = x with sigma~ = s > 0
        lam = -2.0 * jnp.log(s)
        a, _ = alpha_sigma(lam)
        return x_hat(a * x, lam)

    def step(x, i):
        s0, s1 = sig[i], sig[i + 1]
        d = (x - denoise(x, s0)) / s0
        x1 = x + (s1 - s0) * d
        # Heun's correction except into sigma~ = 0 (where the slope is undefined): there the Euler step
        heun = lambda: x + 0.5 * (s1 - s0) * (d + (x1 - denoise(x1, s1)) / s1)  # noqa: E731
        return jax.lax.cond(s1 > 0, heun, lambda: x1), None

    x, _ = jax.lax.scan(step, x, jnp.arange(num_steps))
    return x


def fast_sample(model, params, key: Array, n: int, sampler: str = "dpm_solver_pp_2m", num_steps: int = 20,
                labels: Array | None = None, clip_x: float | None = None) -> Array:
    """``n`` samples in ``model``'s space by a fast sampler on its ``data_predictor(params, labels)`` (class-
    conditional models: ``labels`` default to 0, 1, ... cycling over the classes)."""
    if sampler not in FAST_SAMPLERS:
        raise ValueError(f"fast sampler must be one of {FAST_SAMPLERS}; got {sampler!r}")
    if model.num_classes is not None and labels is None:
        labels = jnp.arange(n, dtype=jnp.int32) % model.num_classes
    # compiled once per model and (sampler, num_steps, n, clip_x), cached on the model (models holding arrays,
    # such as a DDPM's schedule, are not hashable, so the model cannot be a static argument)
    cache = model.__dict__.setdefault("_fast_sample_cache", {})
    spec = (sampler, int(num_steps), int(n), None if clip_x is None else float(clip_x))
    if spec not in cache:
        cache[spec] = jax.jit(functools.partial(_fast_sample, model, *spec))
    return cache[spec](params, key, labels)


def _fast_sample(model, sampler, num_steps, n, clip_x, params, key, labels):
    x_hat, lmax, lmin = model.data_predictor(params, labels)
    if clip_x is not None:
        x_hat = _clipped(x_hat, clip_x)
    fn = dpm_solver_pp_2m if sampler == "dpm_solver_pp_2m" else edm_heun
    return fn(x_hat, key, (n, *model.data_shape), lmax, lmin, num_steps=num_steps)


def _clipped(x_hat: DataPredictor, c: float) -> DataPredictor:
    return lambda z, lam: jnp.clip(x_hat(z, lam), -c, c)
