"""Noise schedules beta_1..beta_T of the forward process, as data passed into jit.

Index convention (used by every function in `gen_jax.diffusion`):
  * In the math, timesteps run t = 1..T; x_0 is data and x_T is (almost) pure noise. The forward step
    is q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).
  * Every per-timestep array of a `NoiseSchedule` has shape [T] and is 0-indexed, so entry ``i``
    belongs to math timestep ``t = i + 1``: ``betas[t - 1] == beta_t``.
  * Public functions take integer timesteps in the math convention, ``t`` in {1, ..., T}, and look
    coefficients up with `NoiseSchedule.at` (which does the ``t - 1``). ``alpha_bar_0 = 1`` (no noise)
    is available as ``alpha_bars_prev[0]``.
"""

from __future__ import annotations

import math
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["NoiseSchedule", "ReverseVariance"]

ReverseVariance = Literal["small", "large"]
"""Fixed reverse-process variance sigma_t^2: 'small' = beta_tilde_t (posterior), 'large' = beta_t."""

_MAX_BETA = 0.999


def _betas_from_alpha_bar(alpha_bar: np.ndarray, max_beta: float) -> np.ndarray:
    """beta_t = min(1 - alpha_bar_t / alpha_bar_{t-1}, max_beta) from alpha_bar_0..alpha_bar_T."""
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return np.clip(betas, 0.0, max_beta)


class NoiseSchedule(flax.struct.PyTreeNode):
    """A variance schedule beta_1..beta_T and every coefficient derived from it (all shape [T]).

    Forward process (the seed's one step) and its closed form::

        x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps,          eps ~ N(0, I)
        q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I),  alpha_bar_t = prod_{s<=t} alpha_s

    Posterior of one reverse step (Ho et al. 2020, eq. 6-7)::

        q(x_{t-1} | x_t, x_0) = N(coef1_t x_0 + coef2_t x_t, beta_tilde_t I)
        coef1_t = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t)
        coef2_t = (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t)
        beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)

    Entry ``i`` of every field is math timestep ``t = i + 1`` (see the module docstring). Build one
    with `linear`, `cosine`, `sigmoid` or `from_betas`; it is a pytree, so pass it into jitted code
    as data.

    Attributes:
      betas: beta_t.
      alphas: alpha_t = 1 - beta_t.
      alpha_bars: alpha_bar_t = prod_{s=1}^t alpha_s.
      alpha_bars_prev: alpha_bar_{t-1} (alpha_bar_0 = 1).
      sqrt_alpha_bars: sqrt(alpha_bar_t).
      sqrt_one_minus_alpha_bars: sqrt(1 - alpha_bar_t).
      snr: signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t).
      posterior_mean_coef1: coef1_t, the coefficient of x_0 in the posterior mean.
      posterior_mean_coef2: coef2_t, the coefficient of x_t in the posterior mean.
      posterior_variance: beta_tilde_t (0 at t = 1).
      posterior_log_variance_clipped: log beta_tilde_t with the t = 1 entry replaced by
        log beta_tilde_2 (finite), as in Ho et al.'s code.
    """

    betas: jax.Array
    alphas: jax.Array
    alpha_bars: jax.Array
    alpha_bars_prev: jax.Array
    sqrt_alpha_bars: jax.Array
    sqrt_one_minus_alpha_bars: jax.Array
    snr: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_betas(cls, betas) -> "NoiseSchedule":
        """Builds a schedule from concrete betas [T] (computed in float64, stored as float32).

        Raises:
          ValueError: if betas is not a non-empty 1-D array with every beta_t in (0, 1).
        """
        try:
            b = np.asarray(betas, dtype=np.float64)
        except (TypeError, jax.errors.TracerArrayConversionError) as e:
            raise ValueError(
                "NoiseSchedule.from_betas needs concrete betas (build the schedule outside jit and "
                f"pass it in as data); got {type(betas).__name__}"
            ) from e
        if b.ndim != 1 or b.shape[0] < 1:
            raise ValueError(f"betas must be a 1-D array with T >= 1 entries; got shape {b.shape}")
        if not np.all(np.isfinite(b)) or np.any(b <= 0.0) or np.any(b >= 1.0):
            bad = b[~(np.isfinite(b) & (b > 0.0) & (b < 1.0))]
            raise ValueError(f"every beta_t must lie in the open interval (0, 1); got {bad[:5]}")
        alphas = 1.0 - b
        alpha_bars = np.cumprod(alphas)
        alpha_bars_prev = np.concatenate([[1.0], alpha_bars[:-1]])
        one_minus = 1.0 - alpha_bars
        post_var = b * (1.0 - alpha_bars_prev) / one_minus
        # log beta_tilde_1 = log 0: clip to log beta_tilde_2 (or log beta_1 when T = 1).
        clip_value = post_var[1] if b.shape[0] > 1 else b[0]
        post_logvar = np.log(np.concatenate([[clip_value], post_var[1:]]))
        f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)  # noqa: E731
        return cls(
            betas=f32(b),
            alphas=f32(alphas),
            alpha_bars=f32(alpha_bars),
            alpha_bars_prev=f32(alpha_bars_prev),
            sqrt_alpha_bars=f32(np.sqrt(alpha_bars)),
            sqrt_one_minus_alpha_bars=f32(np.sqrt(one_minus)),
            snr=f32(alpha_bars / one_minus),
            posterior_mean_coef1=f32(b * np.sqrt(alpha_bars_prev) / one_minus),
            posterior_mean_coef2=f32((1.0 - alpha_bars_prev) * np.sqrt(alphas) / one_minus),
            posterior_variance=f32(post_var),
            posterior_log_variance_clipped=f32(post_logvar),
        )

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """Linear schedule of Ho et al. (2020): beta_t linear from beta_start (t=1) to beta_end (t=T).

        Args:
          T: number of diffusion steps (> 0).
          beta_start: beta_1, in (0, 1).
          beta_end: beta_T, in (0, 1).
        """
        _check_T(T)
        if not (0.0 < beta_start < 1.0 and 0.0 < beta_end < 1.0):
            raise ValueError(
                f"beta_start and beta_end must lie in (0, 1); got beta_start={beta_start}, "
                f"beta_end={beta_end}"
            )
        return cls.from_betas(np.linspace(beta_start, beta_end, T, dtype=np.float64))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = _MAX_BETA) -> "NoiseSchedule":
        """Cosine schedule of Nichol & Dhariwal (2021).

        alpha_bar_t = f(t) / f(0), f(t) = cos^2(((t / T + s) / (1 + s)) pi / 2), and
        beta_t = min(1 - alpha_bar_t / alpha_bar_{t-1}, max_beta) (clipping only acts near t = T).

        Args:
          T: number of diffusion steps (> 0).
          s: small offset that keeps beta_1 away from 0 (>= 0).
          max_beta: upper clip for beta_t, in (0, 1).
        """
        _check_T(T)
        if s < 0.0:
            raise ValueError(f"cosine schedule offset s must be >= 0; got {s}")
        if not 0.0 < max_beta < 1.0:
            raise ValueError(f"max_beta must lie in (0, 1); got {max_beta}")
        t = np.arange(T + 1, dtype=np.float64) / T
        f = np.cos((t + s) / (1.0 + s) * math.pi / 2.0) ** 2
        return cls.from_betas(_betas_from_alpha_bar(f / f[0], max_beta))

    @classmethod
    def sigmoid(
        cls,
        T: int = 1000,
        start: float = -3.0,
        end: float = 3.0,
        tau: float = 1.0,
        max_beta: float = _MAX_BETA,
    ) -> "NoiseSchedule":
        """Sigmoid schedule (Jabri et al. 2022; Chen 2023, "On the importance of noise scheduling").

        With u = t / T and sig the logistic function,
        alpha_bar(u) = (sig(end / tau) - sig((u (end - start) + start) / tau))
                       / (sig(end / tau) - sig(start / tau)),
        and beta_t = min(1 - alpha_bar_t / alpha_bar_{t-1}, max_beta).

        Args:
          T: number of diffusion steps (> 0).
          start, end: the logit range swept by u in [0, 1] (start < end).
          tau: temperature (> 0); larger tau spreads the noise more evenly over t.
          max_beta: upper clip for beta_t, in (0, 1).
        """
        _check_T(T)
        if not start < end:
            raise ValueError(f"sigmoid schedule needs start < end; got start={start}, end={end}")
        if tau <= 0.0:
            raise ValueError(f"sigmoid schedule tau must be > 0; got {tau}")
        if not 0.0 < max_beta < 1.0:
            raise ValueError(f"max_beta must lie in (0, 1); got {max_beta}")
        sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
        u = np.arange(T + 1, dtype=np.float64) / T
        v_start, v_end = sig(start / tau), sig(end / tau)
        alpha_bar = (v_end - sig((u * (end - start) + start) / tau)) / (v_end - v_start)
        alpha_bar = np.clip(alpha_bar, 1e-12, 1.0)
        return cls.from_betas(_betas_from_alpha_bar(alpha_bar, max_beta))

    @classmethod
    def from_log_snr(cls, log_snr, T: int = 1000) -> "NoiseSchedule":
        """The discrete-time schedule of a log-SNR schedule lambda(t), t in [0, 1], read at t = i / T:
        alpha_bar_i = sigmoid(lambda(i / T)), i = 1..T (alpha_bar_0 = 1, the data), so that
        ``log(snr) = lambda(i / T)``; as T grows its bound tends to the continuous-time one
        (:mod:`gen_jax.diffusion.log_snr`).

        Args:
          log_snr: a function of t [T] -> lambda [T] (e.g. ``lambda t: LinearLogSNR().apply({}, t)``),
            decreasing.
          T: number of diffusion steps (> 0).
        """
        _check_T(T)
        lam = np.asarray(log_snr(np.arange(1, T + 1, dtype=np.float64) / T), dtype=np.float64)
        if lam.shape != (T,) or not np.all(np.isfinite(lam)) or np.any(np.diff(lam) >= 0):
            raise ValueError(f"log_snr must map t [T] to finite, strictly decreasing values [T]; got shape "
                             f"{lam.shape}")
        alpha_bar = np.concatenate([[1.0], 1.0 / (1.0 + np.exp(-lam))])
        return cls.from_betas(1.0 - alpha_bar[1:] / alpha_bar[:-1])

    # ------------------------------------------------------------------ accessors
    @property
    def num_timesteps(self) -> int:
        """T, the number of diffusion steps (static: read from the array shape)."""
        return self.betas.shape[0]

    @property
    def log_snr(self) -> jax.Array:
        """lambda_t = log(alpha_bar_t / (1 - alpha_bar_t)) [T], the log signal-to-noise ratio."""
        return jnp.log(self.snr)

    @property
    def T(self) -> int:  # noqa: N802 - the paper's name
        """Alias of `num_timesteps`."""
        return self.num_timesteps

    def at(self, values: jax.Array, t: jax.Array) -> jax.Array:
        """Looks up a per-timestep array at math timesteps t in {1..T}: ``values[t - 1]``.

        Args:
          values: one of this schedule's [T] arrays.
          t: integer timesteps of any shape, each in 1..T.

        Returns:
          An array with the shape of ``t``.
        """
        return jnp.take(values, jnp.asarray(t, jnp.int32) - 1, mode="clip")

    def reverse_log_variance(self, variance: ReverseVariance = "small") -> jax.Array:
        """log sigma_t^2 [T] of the fixed reverse-process variance of Ho et al. (2020).

        'small': sigma_t^2 = beta_tilde_t (the posterior variance, with log beta_tilde_1 clipped to
        log beta_tilde_2); 'large': sigma_t^2 = beta_t, except sigma_1^2 = beta_tilde_2 as in Ho et al.'s
        code ("fixedlarge") so that the t = 1 decoder has a sensible scale.
        """
        if variance == "small":
            return self.posterior_log_variance_clipped
        if variance == "large":
            if self.num_timesteps == 1:
                return jnp.log(self.betas)
            return jnp.concatenate([self.posterior_log_variance_clipped[:1], jnp.log(self.betas[1:])])
        raise ValueError(f"variance must be 'small' or 'large'; got {variance!r}")


def _check_T(T) -> None:
    if not isinstance(T, (int, np.integer)) or isinstance(T, bool) or T < 1:
        raise ValueError(f"number of diffusion steps T must be a positive int; got {T!r}")
