"""A residual MLP denoiser eps_theta(x_t, t) for low-dimensional (e.g. 2D toy) data."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.diffusion.layers import TimeEmbedding, default_init

__all__ = ["MLPDenoiser"]


class MLPDenoiser(nn.Module):
    """Residual MLP: h = Dense(x) + temb; h += Dense(swish(Dense(swish(LN(h))) + Dense(temb))) per
    block; output Dense(swish(LN(h))) zero-initialised, so a fresh network predicts 0.

    Class conditioning works as in `UNet` (label index ``num_classes`` is the null label; ``label=None``
    is unconditional).

    Attributes:
      hidden: width of the residual stream.
      num_blocks: residual blocks.
      time_dim: size of the sinusoidal timestep features.
      num_classes: number of classes for conditioning (None: unconditional).
    """

    hidden: int = 256
    num_blocks: int = 3
    time_dim: int = 128
    num_classes: int | None = None

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, label: jax.Array | None = None, *, train: bool = False
    ) -> jax.Array:
        """Args: x [B, D] float; t [B] int timesteps; label [B] int or None; train (unused)."""
        del train
        if x.ndim != 2:
            raise ValueError(f"MLPDenoiser expects x of shape [B, D]; got {x.shape}")
        B, D = x.shape
        t = jnp.asarray(t)
        if t.shape != (B,):
            raise ValueError(f"MLPDenoiser expects t of shape [B]=({B},); got {t.shape}")
        temb = TimeEmbedding(self.time_dim, self.hidden, name="temb")(t)  # [B, hidden]
        if self.num_classes is not None:
            if label is None:
                label = jnp.full((B,), self.num_classes, jnp.int32)
            temb = temb + nn.Embed(self.num_classes + 1, self.hidden, name="label_emb")(label)
        temb = nn.swish(temb).astype(x.dtype)  # computed from float32 times; joins the activations in their dtype
        h = nn.Dense(self.hidden, kernel_init=default_init(), name="dense_in")(x) + temb
        for i in range(self.num_blocks):
            r = nn.swish(nn.LayerNorm(name=f"norm{i}")(h))
            r = nn.Dense(self.hidden, kernel_init=default_init(), name=f"dense{i}_0")(r)
            r = r + nn.Dense(self.hidden, kernel_init=default_init(), name=f"temb{i}")(temb)
            r = nn.Dense(self.hidden, kernel_init=default_init(), name=f"dense{i}_1")(nn.swish(r))
            h = h + r
        h = nn.swish(nn.LayerNorm(name="norm_out")(h))
        return nn.Dense(D, kernel_init=nn.initializers.zeros, name="dense_out")(h)  # [B, D]
