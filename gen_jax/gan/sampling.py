"""Sampling from a GAN generator: ``x = G(z)``, ``z ~ p_z = N(0, I)``."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from gen_jax.precision import Policy

PyTree = Any


def sample_latent(key: jax.Array, n: int, latent_dim: int) -> jax.Array:
    """``z ~ N(0, I)`` of shape ``[n, latent_dim]``."""
    if n < 1 or latent_dim < 1:
        raise ValueError(f"n and latent_dim must be >= 1, got n={n!r}, latent_dim={latent_dim!r}")
    return jax.random.normal(key, (n, latent_dim))


def generate(
    generator: nn.Module,
    g_params: PyTree,
    key: jax.Array,
    n: int,
    *,
    latent_dim: int,
    labels: jax.Array | None = None,
    precision: Policy = Policy(),
) -> jax.Array:
    """``n`` samples ``G(z)`` in the generator's output space (images: ``[-1, 1]``).

    Args:
      generator: the generator module.
      g_params: its parameters (e.g. ``state.g.eval_params`` for the EMA).
      key: PRNG key for ``z``.
      n: number of samples.
      latent_dim: dimension of ``z``.
      labels: ``[n]`` int labels for a conditional generator, else ``None``.
      precision: the generator's compute dtype (:class:`gen_jax.precision.Policy`; samples are float32).
    """
    z = sample_latent(key, n, latent_dim)
    return precision.apply(generator, {"params": g_params}, z, labels)
