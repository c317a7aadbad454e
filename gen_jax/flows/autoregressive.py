"""Masked autoregressive flow (Papamakarios et al. 2017) with MADE masks (Germain et al. 2015)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.flows.bijectors import Bijector, _soft_clamp

Array = jax.Array


# ---------------------------------------------------------------------------------------------
# Masked autoregressive flow (Papamakarios et al. 2017) with MADE (Germain et al. 2015).


def made_masks(dim: int, hidden: Sequence[int], num_params: int) -> list[np.ndarray]:
    """MADE connectivity masks for the natural order x_1, ..., x_D.

    Input degrees are 1..D, hidden degrees cycle through 1..D-1; a hidden unit of degree m sees
    inputs of degree <= m, and output ``(j, d)`` (parameter j of dimension d) sees hidden units of
    degree < d. Hence output d depends only on x_{<d}. Returns masks ``[in, out]`` per layer; the
    last one has ``num_params * D`` outputs ordered ``[param, dim]``.
    """
    degrees = [np.arange(1, dim + 1)]
    for width in hidden:
        degrees.append(np.arange(width) % max(1, dim - 1) + 1)
    masks = [(d_out[None, :] >= d_in[:, None]).astype(np.float32) for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    out_deg = np.tile(np.arange(1, dim + 1), num_params)
    masks.append((out_deg[None, :] > degrees[-1][:, None]).astype(np.float32))
    return masks


class MaskedAutoregressive(Bijector):
    """One MAF layer: ``z_i = (x_i - mu_i(x_{<i})) * exp(-alpha_i(x_{<i}))`` (data -> latent).

    log|det dz/dx| = -sum_i alpha_i (triangular Jacobian). ``forward`` is one MADE pass; ``inverse``
    ``x_i = z_i exp(alpha_i) + mu_i`` is D sequential passes (``lax.fori_loop``; pass i fixes x_i).
    ``alpha = max_log_scale * tanh(raw / max_log_scale)``; the output layer is zero-initialised.

    Attributes:
      hidden: MADE hidden widths.
      max_log_scale: bound on |alpha|.
    """

    hidden: Sequence[int] = (64, 64)
    max_log_scale: float = 3.0

    @nn.compact
    def _transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        if x.ndim != 2:
            raise ValueError(f"MaskedAutoregressive expects [B, D] inputs, got shape {x.shape}")
        dim = x.shape[-1]
        masks = made_masks(dim, self.hidden, 2)
        weights = []
        for i, m in enumerate(masks):
            last = i == len(masks) - 1
            k_init = nn.initializers.zeros if last else nn.initializers.lecun_normal()
            kernel = self.param(f"kernel_{i}", k_init, m.shape, jnp.float32)
            bias = self.param(f"bias_{i}", nn.initializers.zeros, m.shape[1:], jnp.float32)
            weights.append((kernel * jnp.asarray(m, kernel.dtype), bias))

        def made(v):  # [B, D] -> (mu, alpha) each [B, D]
            h = v
            for j, (kernel, bias) in enumerate(weights):
                h = h @ kernel + bias[None, :]
                if j < len(weights) - 1:
                    h = nn.gelu(h)
            return h[:, :dim], _soft_clamp(h[:, dim:], self.max_log_scale)

        if not inverse:
            mu, alpha = made(x)
            return (x - mu) * jnp.exp(-alpha), -jnp.sum(alpha, axis=1)

        z = x

        def body(_, v):
            mu, alpha = made(v)
            return z * jnp.exp(alpha) + mu

        x_rec = jax.lax.fori_loop(0, dim, body, jnp.zeros_like(z))
        _, alpha = made(x_rec)
        return x_rec, jnp.sum(alpha, axis=1)
