"""Noise schedules as a log signal-to-noise ratio lambda(t), t in [0, 1]: one concept for continuous and
discrete time.

A variance-preserving diffusion noises data x as z_t = alpha_t x + sigma_t eps with alpha_t^2 + sigma_t^2 = 1,
and everything about the schedule is the log-SNR

    lambda(t) = log(alpha_t^2 / sigma_t^2),   alpha_t^2 = sigmoid(lambda(t)),   sigma_t^2 = sigmoid(-lambda(t)),

decreasing from ``log_snr_max`` at t = 0 (almost clean) to ``log_snr_min`` at t = 1 (almost pure noise)
(Kingma et al. 2021, "Variational Diffusion Models", write gamma(t) = -lambda(t)). A schedule is a Flax
module ``lambda = schedule.apply(variables, t)`` applied elementwise to t of any shape; the fixed ones have
no parameters, :class:`LearnedLogSNR` has a monotone network. A discrete-time schedule of T steps is the
same function read at t = i / T: :meth:`gen_jax.diffusion.NoiseSchedule.from_log_snr`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["LinearLogSNR", "CosineLogSNR", "LearnedLogSNR", "LOG_SNR_SCHEDULES", "alpha_sigma", "make_log_snr_schedule",
           "log_snr_and_derivative"]

LOG_SNR_SCHEDULES = ("linear", "cosine", "learned")


def _check_range(log_snr_max: float, log_snr_min: float) -> None:
    if not (math.isfinite(log_snr_max) and math.isfinite(log_snr_min) and log_snr_max > log_snr_min):
        raise ValueError(f"a log-SNR schedule needs finite log_snr_max > log_snr_min; got "
                         f"log_snr_max={log_snr_max}, log_snr_min={log_snr_min}")


def _as_float(t) -> jax.Array:
    """t as a float array: float32, or float64 where it already is (x64 mode)."""
    t = jnp.asarray(t)
    return t.astype(jnp.result_type(t.dtype, jnp.float32))


def alpha_sigma(log_snr: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(alpha, sigma) with alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda) (variance preserving)."""
    return jnp.sqrt(jax.nn.sigmoid(log_snr)), jnp.sqrt(jax.nn.sigmoid(-log_snr))


def log_snr_and_derivative(schedule: nn.Module, variables, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(lambda(t), d lambda / dt) elementwise, the derivative by forward-mode autodiff."""
    t = _as_float(t)
    return jax.jvp(lambda u: schedule.apply(variables, u), (t,), (jnp.ones_like(t),))


class LinearLogSNR(nn.Module):
    """lambda(t) = log_snr_max + (log_snr_min - log_snr_max) t (VDM's fixed schedule; its defaults
    13.3 and -5: alpha_0^2 = 1 - 1.7e-6 and alpha_1^2 = 0.0067)."""

    log_snr_max: float = 13.3
    log_snr_min: float = -5.0

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        _check_range(self.log_snr_max, self.log_snr_min)
        return self.log_snr_max + (self.log_snr_min - self.log_snr_max) * _as_float(t)


class CosineLogSNR(nn.Module):
    """The cosine schedule (Nichol & Dhariwal 2021) in log-SNR form, truncated to [log_snr_min, log_snr_max]:
    lambda(t) = -2 log tan(a t + b), with b = arctan(exp(-log_snr_max / 2)) and
    a = arctan(exp(-log_snr_min / 2)) - b (Kingma & Gao 2023)."""

    log_snr_max: float = 13.3
    log_snr_min: float = -5.0

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        _check_range(self.log_snr_max, self.log_snr_min)
        b = math.atan(math.exp(-0.5 * self.log_snr_max))
        a = math.atan(math.exp(-0.5 * self.log_snr_min)) - b
        return -2.0 * jnp.log(jnp.tan(a * _as_float(t) + b))


class _MonotoneDense(nn.Module):
    """Dense layer with non-negative weights (|kernel|): non-decreasing in every input."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return x @ jnp.abs(kernel) + jnp.reshape(bias, (1,) * (x.ndim - 1) + (-1,))


class LearnedLogSNR(nn.Module):
    """A learned monotone schedule (Kingma et al. 2021, appendix): its endpoints are parameters
    (initialised at ``log_snr_max``/``log_snr_min``) and its shape between them a monotone network,

        h(t) = l1(t) + l3(sigmoid(l2(l1(t)))),   lambda(t) = lmax + (lmin - lmax) (h(t) - h(0)) / (h(1) - h(0)),

    with l1, l2, l3 dense layers of non-negative weights (1, ``hidden``, 1 units), so lambda is
    decreasing with lambda(0) = lmax and lambda(1) = lmin exactly. Only the endpoints change the
    continuous-time bound; the shape changes its variance, which is what it is trained on
    (:class:`gen_jax.diffusion.VariationalDiffusionModel`)."""

    log_snr_max: float = 13.3
    log_snr_min: float = -5.0
    hidden: int = 1024

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        _check_range(self.log_snr_max, self.log_snr_min)
        lmax = self.param("log_snr_max", lambda _: jnp.float32(self.log_snr_max))
        lmin = self.param("log_snr_min", lambda _: jnp.float32(self.log_snr_min))
        l1, l2, l3 = _MonotoneDense(1, name="l1"), _MonotoneDense(self.hidden, name="l2"), _MonotoneDense(1, name="l3")

        def h(u):
            y = l1(u[..., None])
            return (y + l3(jax.nn.sigmoid(l2(y))))[..., 0]

        t = jnp.asarray(t, jnp.float32)
        h0, h1 = h(jnp.zeros((), jnp.float32)), h(jnp.ones((), jnp.float32))
        shape = (h(t) - h0) / (h1 - h0)
        return lmax + (lmin - lmax) * shape


def make_log_snr_schedule(kind: str, log_snr_max: float = 13.3, log_snr_min: float = -5.0,
                          hidden: int = 1024) -> nn.Module:
    """A schedule module by name: 'linear', 'cosine' or 'learned'."""
    _check_range(log_snr_max, log_snr_min)
    if kind == "linear":
        return LinearLogSNR(log_snr_max, log_snr_min)
    if kind == "cosine":
        return CosineLogSNR(log_snr_max, log_snr_min)
    if kind == "learned":
        return LearnedLogSNR(log_snr_max, log_snr_min, hidden)
    raise ValueError(f"log-SNR schedule must be one of {LOG_SNR_SCHEDULES}; got {kind!r}")
