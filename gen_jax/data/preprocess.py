"""The preprocessing of 8-bit images, one home for every family.

Batches hold raw images (uint8 ``[B, H, W, C]`` in 0..255); each family's objective maps them to its
model's space with one of these (with the step's key where it is random).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_unit(x: jax.Array) -> jax.Array:
    """uint8 in {0..255} -> float32 in [0, 1] (``x / 255``)."""
    return jnp.asarray(x, jnp.float32) / 255.0


def to_symmetric(x: jax.Array) -> jax.Array:
    """uint8 in {0..255} -> float32 in [-1, 1] (``x / 127.5 - 1``)."""
    return jnp.asarray(x, jnp.float32) / 127.5 - 1.0


def dynamic_binarize(key: jax.Array, x: jax.Array) -> jax.Array:
    """Dynamic binarisation: each pixel ~ Bernoulli(x / 255), resampled at every use (every key)."""
    return jax.random.bernoulli(key, to_unit(x)).astype(jnp.float32)


def uniform_dequantize(key: jax.Array, x: jax.Array, num_bits: int = 8) -> jax.Array:
    """Uniform dequantization of integer data: ``y = (x + u) / 2^bits``, ``u ~ U[0, 1)^D``, so y in [0, 1).

    A continuous density p(y) on [0, 1)^D then lower-bounds the discrete likelihood:
    log P(x) >= E_u[log p(y)] - D * bits * log 2.
    """
    if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.integer):
        raise ValueError(f"uniform_dequantize expects integer (e.g. uint8) data, got dtype {jnp.asarray(x).dtype}")
    u = jax.random.uniform(key, jnp.shape(x))
    return (jnp.asarray(x, jnp.float32) + u) / float(2**num_bits)
