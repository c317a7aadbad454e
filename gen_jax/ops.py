"""Small numerical helpers shared by the families (one home for each)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LOG_2PI = math.log(2.0 * math.pi)


def sum_except_batch(x: jax.Array) -> jax.Array:
    """``[B, ...] -> [B]``: the sum over every axis but the first (as one flattened axis)."""
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def mean_except_batch(x: jax.Array) -> jax.Array:
    """``[B, ...] -> [B]``: the mean over every axis but the first."""
    return jnp.mean(x.reshape(x.shape[0], -1), axis=-1)


def standard_normal_log_prob(z: jax.Array, event_ndims: int | None = None) -> jax.Array:
    """``log N(z; 0, I) = -1/2 sum_i (z_i^2 + log 2 pi)`` over the last ``event_ndims`` axes of ``z``
    (default: every axis but the first), e.g. ``[B, H, W, C] -> [B]`` or, with ``event_ndims=1``,
    ``[S, B, k] -> [S, B]``."""
    n = z.ndim - 1 if event_ndims is None else event_ndims
    terms = z * z + LOG_2PI
    return -0.5 * jnp.sum(terms.reshape(z.shape[:z.ndim - n] + (-1,)), axis=-1)
