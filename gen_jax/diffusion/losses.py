"""Diffusion objectives: the variational bound of Ho et al. (2020) and its reweighted eps/x0/v losses.

The bound on the negative log-likelihood (the seed's objective, written as a sum of KL terms)::

    -log p_theta(x_0) <= L = L_T + sum_{t=2}^T L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || N(0, I))                                    (prior term)
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))             (t = 2..T)
    L_0     = -log p_theta(x_0 | x_1)                                        (decoder)

with p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I), mu_theta = coef1_t x0_hat + coef2_t x_t.
For Gaussians with equal variance, L_{t-1} = ||mu_tilde - mu_theta||^2 / (2 sigma_t^2) + C_t, which in
terms of the noise prediction is the weighted eps-MSE
    beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)) ||eps - eps_theta(x_t, t)||^2 + C_t;
dropping the weights gives Ho et al.'s L_simple = E_{t, x_0, eps} ||eps - eps_theta(x_t, t)||^2.

Denoiser function protocol used by `variational_bound` and the samplers::

    apply_fn(params, x_t [B, ...], t [B] int32 in 1..T, label [B] int32 or None) -> output [B, ...]

(`make_denoise_fn(module)` builds one from a `UNet` / `MLPDenoiser`.)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

from gen_jax.diffusion.process import (
    PARAMETERIZATIONS,
    Parameterization,
    predict_x0_eps,
    prediction_target,
    q_mean_variance,
    q_posterior,
    q_sample,
)
from gen_jax.diffusion.schedules import NoiseSchedule, ReverseVariance
from gen_jax.data.preprocess import to_symmetric
from gen_jax.ops import mean_except_batch, sum_except_batch
from gen_jax.precision import Policy

__all__ = [
    "DenoiseFn",
    "Weighting",
    "WEIGHTINGS",
    "make_denoise_fn",
    "to_model_space",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "gaussian_log_likelihood",
    "prior_kl",
    "loss_weight",
    "denoising_loss",
    "variational_bound",
]

DenoiseFn = Callable[[Any, jax.Array, jax.Array, "jax.Array | None"], jax.Array]
Weighting = Literal["simple", "vlb", "min_snr"]
WEIGHTINGS = ("simple", "vlb", "min_snr")

_LN2 = math.log(2.0)


def make_denoise_fn(module: nn.Module, precision: Policy = Policy()) -> DenoiseFn:
    """Wraps a denoiser module as ``apply_fn(params, x_t, t, label=None)`` (deterministic, eval mode), computing
    in ``precision``'s dtype (:mod:`gen_jax.precision`).

    Build it once and reuse it: samplers take it as a static (hashed) argument.
    """

    def apply_fn(params, x_t, t, label=None):
        return precision.apply(module, {"params": params}, x_t, t, label, train=False)

    return apply_fn


def to_model_space(x: jax.Array) -> tuple[jax.Array, bool]:
    """Maps a batch to the model's data space: uint8 images -> x / 127.5 - 1 in [-1, 1]; floats as is.

    Returns:
      (x as float32, whether the data are 8-bit discrete).
    """
    if x.dtype == jnp.uint8:
        return to_symmetric(x), True
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"diffusion data must be uint8 images or float arrays; got dtype {x.dtype}")
    return x.astype(jnp.float32), False


def normal_kl(mean1: jax.Array, logvar1: jax.Array, mean2: jax.Array, logvar2: jax.Array) -> jax.Array:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats.

    KL = 0.5 (logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2) - 1).
    """
    return 0.5 * (
        logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + jnp.square(mean1 - mean2) * jnp.exp(-logvar2) - 1.0
    )


def _log_ndtr_diff(hi: jax.Array, lo: jax.Array) -> jax.Array:
    """log(Phi(hi) - Phi(lo)) for hi > lo, computed in the lower tail for accuracy."""
    flip = lo > 0.0  # both in the upper tail: Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)
    a = jnp.where(flip, -lo, hi)
    b = jnp.where(flip, -hi, lo)
    la, lb = log_ndtr(a), log_ndtr(b)
    return la + jnp.log(jnp.maximum(-jnp.expm1(lb - la), 1e-12))


def discretized_gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
    """Elementwise log-probability of 8-bit data under a Gaussian discretised to 256 bins.

    As in Ho et al.'s code: data are scaled to [-1, 1] with bin centres k * 2/255 - 1, each bin has
    width 2/255, and the outermost bins extend to -inf / +inf, so the 256 probabilities sum to 1:
        P(x) = Phi((x + 1/255 - mean) / s) - Phi((x - 1/255 - mean) / s),  s = exp(log_scale).

    Args:
      x: data on the grid {k * 2/255 - 1}, any shape.
      mean: Gaussian means, same shape.
      log_scale: log standard deviations, broadcastable.

    Returns:
      log P(x) in nats, the shape of x.
    """
    inv_s = jnp.exp(-log_scale)
    centered = x - mean
    plus_in = inv_s * (centered + 1.0 / 255.0)
    min_in = inv_s * (centered - 1.0 / 255.0)
    log_cdf_plus = log_ndtr(plus_in)  # bin [-inf, x + 1/255] for x = -1
    log_one_minus_cdf_min = log_ndtr(-min_in)  # bin [x - 1/255, inf] for x = 1
    log_delta = _log_ndtr_diff(plus_in, min_in)
    return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
    """Elementwise continuous log N(x; mean, exp(log_scale)^2) in nats."""
    z = (x - mean) * jnp.exp(-log_scale)
    return -0.5 * jnp.square(z) - log_scale - 0.5 * math.log(2.0 * math.pi)


def prior_kl(schedule: NoiseSchedule, x0: jax.Array) -> jax.Array:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per example, in nats: [B, ...] -> [B]."""
    T = schedule.num_timesteps
    mean, var = q_mean_variance(schedule, x0, jnp.full((x0.shape[0],), T, jnp.int32))
    kl = normal_kl(mean, jnp.broadcast_to(jnp.log(var), mean.shape), 0.0, 0.0)
    return sum_except_batch(kl)


def _native_to_x0_factor(schedule: NoiseSchedule, t: jax.Array, parameterization: str) -> jax.Array:
    """r_t with ||native error||^2 = r_t ||x0 error||^2: eps -> SNR_t, x0 -> 1, v -> SNR_t + 1."""
    snr = schedule.at(schedule.snr, t)
    if parameterization == "eps":
        return snr
    if parameterization == "x0":
        return jnp.ones_like(snr)
    return snr + 1.0


def loss_weight(
    schedule: NoiseSchedule,
    t: jax.Array,
    *,
    parameterization: Parameterization = "eps",
    weighting: Weighting = "simple",
    min_snr_gamma: float = 5.0,
    variance: ReverseVariance = "large",
) -> jax.Array:
    """Weight w_t of the per-dimension MSE in the network's own output space (eps, x0 or v).

    * 'simple': w_t = 1 (L_simple when parameterization='eps').
    * 'vlb': the true bound's weights, scaled so that the loss is an unbiased estimate of
      sum_{t=1}^T L_{t-1} per dimension (the decoder approximated by a Gaussian):
      w_t = T coef1_t^2 / (2 sigma_t^2 r_t), which for eps is T beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)).
    * 'min_snr': Min-SNR-gamma (Hang et al. 2023): x0-space weight min(SNR_t, gamma), i.e.
      w_t = min(SNR_t, gamma) / r_t.
    Here r_t = SNR_t, 1, SNR_t + 1 for eps, x0, v converts squared errors to x0 space.

    Args:
      t: timesteps in 1..T, any shape.

    Returns:
      Weights with the shape of t.
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}; got {parameterization!r}")
    if weighting == "simple":
        return jnp.ones(jnp.shape(t), jnp.float32)
    r = _native_to_x0_factor(schedule, t, parameterization)
    if weighting == "vlb":
        sigma2 = jnp.exp(schedule.at(schedule.reverse_log_variance(variance), t))
        coef1 = schedule.at(schedule.posterior_mean_coef1, t)
        return schedule.num_timesteps * jnp.square(coef1) / (2.0 * sigma2 * r)
    if weighting == "min_snr":
        if min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be > 0; got {min_snr_gamma}")
        return jnp.minimum(schedule.at(schedule.snr, t), min_snr_gamma) / r
    raise ValueError(f"weighting must be one of {WEIGHTINGS}; got {weighting!r}")


def denoising_loss(
    schedule: NoiseSchedule,
    model_output: jax.Array,
    x0: jax.Array,
    eps: jax.Array,
    t: jax.Array,
    *,
    parameterization: Parameterization = "eps",
    weighting: Weighting = "simple",
    min_snr_gamma: float = 5.0,
    variance: ReverseVariance = "large",
) -> tuple[jax.Array, jax.Array]:
    """Per-example weighted regression loss w_t * mean_d (target - model_output)^2.

    Args:
      model_output: the denoiser output at x_t = q_sample(schedule, x0, t, eps), [B, ...].
      x0, eps: the clean data and the noise used to make x_t, [B, ...].
      t: timesteps [B].

    Returns:
      (weighted loss [B], unweighted MSE [B]).
    """
    target = prediction_target(schedule, x0, t, eps, parameterization)
    mse = mean_except_batch(jnp.square(target - model_output))
    w = loss_weight(
        schedule,
        t,
        parameterization=parameterization,
        weighting=weighting,
        min_snr_gamma=min_snr_gamma,
        variance=variance,
    )
    return w * mse, mse


def _bound_terms_at(
    apply_fn: DenoiseFn,
    params,
    schedule: NoiseSchedule,
    x0: jax.Array,
    t: jax.Array,
    eps: jax.Array,
    label: jax.Array | None,
    *,
    parameterization: str,
    variance: str,
    clip_x0: float | None,
    discrete: bool,
) -> jax.Array:
    """L_{t-1} per example [B] for timesteps t [B] (decoder L_0 where t == 1, KL elsewhere), nats."""
    xt = q_sample(schedule, x0, t, eps)
    out = apply_fn(params, xt, t, label)
    x0_hat, _ = predict_x0_eps(schedule, xt, t, out, parameterization, clip_x0)
    true_mean, _, true_logvar = q_posterior(schedule, x0, xt, t)
    model_mean, _, _ = q_posterior(schedule, x0_hat, xt, t)
    model_logvar = schedule.at(schedule.reverse_log_variance(variance), t)
    model_logvar = model_logvar.reshape(t.shape + (1,) * (x0.ndim - 1))
    kl = sum_except_batch(normal_kl(true_mean, true_logvar, model_mean, jnp.broadcast_to(model_logvar, x0.shape)))
    if discrete:
        ll = discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)
    else:
        ll = gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)
    decoder_nll = -sum_except_batch(ll)
    return jnp.where(t == 1, decoder_nll, kl)


def variational_bound(
    apply_fn: DenoiseFn,
    params,
    schedule: NoiseSchedule,
    x0: jax.Array,
    rng: jax.Array,
    *,
    label: jax.Array | None = None,
    parameterization: Parameterization = "eps",
    variance: ReverseVariance = "large",
    clip_x0: bool | None = None,
    t_chunk: int = 1,
) -> dict[str, jax.Array]:
    """The full variational bound L = L_T + sum_{t=2}^T L_{t-1} + L_0 per example (all T terms).

    Every term uses its own x_t ~ q(x_t | x_0) (one sample per t, noise from fold_in(rng, t)). For
    uint8 images [B, H, W, C] the data are scaled to [-1, 1] and L_0 is the discretised Gaussian
    decoder (bins of width 2/255, edges at +-inf), so ``bits_per_dim`` is an upper bound on the
    negative log2-likelihood of the 8-bit data per dimension. For float data the decoder is a
    continuous Gaussian and the bound is on the differential entropy (nats; bits/dim for reference).

    The timesteps are processed ``t_chunk`` at a time with `jax.lax.map`, so memory is that of
    ``t_chunk * B`` network evaluations. Jit this function with apply_fn and the options static.

    Args:
      apply_fn: ``apply_fn(params, x_t, t, label) -> output`` (see `make_denoise_fn`).
      params: denoiser parameters (e.g. EMA params).
      schedule: the noise schedule.
      x0: uint8 images [B, H, W, C] or float data [B, ...].
      rng: PRNG key.
      label: class labels [B] for a conditional denoiser, or None.
      parameterization: 'eps', 'x0' or 'v'.
      variance: reverse variance sigma_t^2: 'large' (beta_t, as in Ho et al.'s reported bounds) or
        'small' (beta_tilde_t).
      clip_x0: clip x0_hat to [-1, 1] (default: True for uint8 images, False for floats).
      t_chunk: timesteps per network call (>= 1).

    Returns:
      Dict of per-example arrays [B]: 'bits_per_dim', 'nll_nats' (the whole bound), 'prior_nats'
      (L_T), 'decoder_nats' (L_0), 'diffusion_nats' (sum of L_1..L_{T-1}); and 'terms_nats' [B, T]
      whose entry t - 1 is L_{t-1} (the term evaluated at timestep t).
    """
    if t_chunk < 1:
        raise ValueError(f"t_chunk must be >= 1; got {t_chunk}")
    x, discrete = to_model_space(x0)
    if clip_x0 is None:
        clip_x0 = discrete
    B = x.shape[0]
    D = math.prod(x.shape[1:])
    T = schedule.num_timesteps
    n_chunks = -(-T // t_chunk)
    ts = jnp.arange(1, n_chunks * t_chunk + 1, dtype=jnp.int32)
    ts = jnp.minimum(ts, T).reshape(n_chunks, t_chunk)  # padding repeats t = T; dropped below

    def chunk_terms(t_c: jax.Array) -> jax.Array:  # [C] -> [C, B]
        eps = jax.vmap(lambda t: jax.random.normal(jax.random.fold_in(rng, t), x.shape, x.dtype))(t_c)
        C = t_c.shape[0]
        flat = lambda a: a.reshape((C * B,) + a.shape[2:])  # noqa: E731
        x_rep = flat(jnp.broadcast_to(x[None], (C,) + x.shape))
        t_rep = jnp.repeat(t_c, B)
        lab = None if label is None else jnp.tile(jnp.asarray(label, jnp.int32), C)
        terms = _bound_terms_at(
            apply_fn,
            params,
            schedule,
            x_rep,
            t_rep,
            flat(eps),
            lab,
            parameterization=parameterization,
            variance=variance,
            clip_x0=1.0 if clip_x0 else None,
            discrete=discrete,
        )
        return terms.reshape(C, B)

    terms = jax.lax.map(chunk_terms, ts).reshape(n_chunks * t_chunk, B)[:T].T  # [B, T]
    prior = prior_kl(schedule, x)
    decoder = terms[:, 0]
    diffusion = jnp.sum(terms[:, 1:], axis=-1)
    total = prior + decoder + diffusion
    return {
        "bits_per_dim": total / (D * _LN2),
        "nll_nats": total,
        "prior_nats": prior,
        "decoder_nats": decoder,
        "diffusion_nats": diffusion,
        "terms_nats": terms,
    }
