"""Diagonal Gaussians for the VAE's posterior q_phi(z|x) and prior p(z) = N(0, I).

Convention used throughout ``gen_jax.vae``: a diagonal Gaussian is given by its ``mean`` and its
``log_var`` (log of the per-dimension variance sigma^2), both of shape ``[B, k]``.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from gen_jax.ops import LOG_2PI, standard_normal_log_prob



def _check_pair(mean: jax.Array, log_var: jax.Array) -> None:
    if mean.shape != log_var.shape:
        raise ValueError(
                f"mean and log_var must have the same shape, got {mean.shape} and {log_var.shape}.")
    if mean.ndim < 1:
        raise ValueError(f"mean must have at least one (event) axis, got shape {mean.shape}.")


def sample_diag_normal(rng: jax.Array, mean: jax.Array, log_var: jax.Array) -> jax.Array:
    """Reparameterised sample z = mean + exp(log_var / 2) * eps, eps ~ N(0, I).

    Gradients flow to ``mean`` and ``log_var`` through z (the reparameterisation trick).

    Args:
        rng: PRNG key.
        mean: ``[..., k]`` means.
        log_var: ``[..., k]`` log variances.

    Returns:
        ``[..., k]`` samples.
    """
    _check_pair(mean, log_var)
    eps = jax.random.normal(rng, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * log_var) * eps


def diag_normal_log_prob(z: jax.Array, mean: jax.Array, log_var: jax.Array) -> jax.Array:
    """log N(z; mean, diag(exp(log_var))), summed over the last axis.

    log N = -1/2 sum_j [ log(2 pi) + log_var_j + (z_j - mean_j)^2 / exp(log_var_j) ].

    Args:
        z: ``[..., k]`` points.
        mean: ``[..., k]`` means (broadcastable to ``z`` with equal rank).
        log_var: ``[..., k]`` log variances.

    Returns:
        ``[...]`` log densities.
    """
    _check_pair(mean, log_var)
    if z.ndim != mean.ndim:
        raise ValueError(f"z must have the rank of mean, got {z.shape} and {mean.shape}.")
    sq = jnp.square(z - mean) * jnp.exp(-log_var)
    return -0.5 * jnp.sum(LOG_2PI + log_var + sq, axis=-1)


def kl_diag_normal(mean: jax.Array, log_var: jax.Array) -> jax.Array:
    """Analytic KL(q || p) between q = N(mean, diag(exp(log_var))) and the prior p = N(0, I).

    KL = 1/2 sum_j [ exp(log_var_j) + mean_j^2 - 1 - log_var_j ].

    Args:
        mean: ``[B, k]`` posterior means.
        log_var: ``[B, k]`` posterior log variances.

    Returns:
        ``[B]`` KL divergences in nats.
    """
    _check_pair(mean, log_var)
    return 0.5 * jnp.sum(jnp.exp(log_var) + jnp.square(mean) - 1.0 - log_var, axis=-1)


def kl_monte_carlo(z: jax.Array, mean: jax.Array, log_var: jax.Array) -> jax.Array:
    """Single-sample Monte Carlo KL estimate log q_phi(z|x) - log p(z) at z ~ q_phi(z|x).

    Its expectation under z ~ q is :func:`kl_diag_normal`; average over samples for a lower-variance
    estimate.

    Args:
        z: ``[..., B, k]`` samples from q (leading sample axes allowed).
        mean: ``[B, k]`` posterior means.
        log_var: ``[B, k]`` posterior log variances.

    Returns:
        ``[..., B]`` per-sample KL estimates in nats.
    """
    _check_pair(mean, log_var)
    extra = z.ndim - mean.ndim
    if extra < 0 or z.shape[extra:] != mean.shape:
        raise ValueError(f"z must have shape [..., *{mean.shape}], got {z.shape}.")
    m = mean.reshape((1,) * extra + mean.shape)
    lv = log_var.reshape((1,) * extra + log_var.shape)
    return diag_normal_log_prob(z, m, lv) - standard_normal_log_prob(z, event_ndims=1)
