"""Blocks shared by the denoisers: sinusoidal timestep embedding and initialisers.

(Candidates for `gen_jax/nn.py` if other families need them.)
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["timestep_embedding", "TimeEmbedding", "default_init"]


def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
    """The DDPM initialiser: variance scaling with fan_avg and a uniform distribution."""
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal embedding of (integer or real) timesteps, as in the Transformer and DDPM.

    emb(t)_i = sin(t w_i) for i < dim/2 and cos(t w_{i - dim/2}) after, with geometric frequencies
    w_i = max_period^(-i / (dim/2 - 1)).

    Args:
      t: timesteps [B].
      dim: embedding size (even, >= 4).
      max_period: the longest period.

    Returns:
      [B, dim] float32 embedding.
    """
    if dim % 2 != 0 or dim < 4:
        raise ValueError(f"timestep embedding dim must be even and >= 4; got {dim}")
    t = jnp.asarray(t, jnp.float32)
    if t.ndim != 1:
        raise ValueError(f"timesteps must have shape [B]; got {t.shape}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    args = t[:, None] * freqs[None, :]  # [B, half]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class TimeEmbedding(nn.Module):
    """t -> Dense(sinusoid(t)) -> swish -> Dense: the DDPM timestep embedding MLP.

    Attributes:
      sinusoid_dim: size of the sinusoidal features.
      features: output size.
    """

    sinusoid_dim: int
    features: int

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        h = timestep_embedding(t, self.sinusoid_dim)
        h = nn.Dense(self.features, kernel_init=default_init(), name="dense0")(h)
        h = nn.swish(h)
        return nn.Dense(self.features, kernel_init=default_init(), name="dense1")(h)  # [B, features]
