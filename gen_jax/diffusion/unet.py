"""The DDPM U-Net denoiser (Ho et al. 2020, following the PixelCNN++ / Wide-ResNet backbone).

`UNet(x_t, t, label)` predicts eps (or x_0 / v) with the shape of x_t. The default sizes are the
DDPM CIFAR-10 network (ch=128, ch_mult=(1, 2, 2, 2), 2 residual blocks per level, self-attention at
16x16, dropout 0.1: 35.7M parameters); smaller channel counts / multipliers give a small MNIST model.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.diffusion.layers import TimeEmbedding, default_init
from gen_jax.nn import Conv, GroupNorm, remat

__all__ = ["UNet", "ResBlock", "AttentionBlock", "Downsample", "Upsample"]


def _group_norm(num_groups: int, channels: int, name: str | None = None, activation=None) -> GroupNorm:
    if channels % num_groups != 0:
        raise ValueError(f"GroupNorm: channels={channels} is not divisible by norm_groups={num_groups}")
    return GroupNorm(num_groups=num_groups, epsilon=1e-6, activation=activation, name=name)


class ResBlock(nn.Module):
    """h = x + conv(dropout(swish(GN(conv(swish(GN(x))) + Dense(swish(temb)))))), zero-init last conv.

    Attributes:
      features: output channels (a 1x1 projection is used on the skip path if they change).
      dropout: dropout rate on the second conv's input (train only).
      norm_groups: GroupNorm groups.
    """

    features: int
    dropout: float = 0.0
    norm_groups: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, train: bool = False) -> jax.Array:
        c_in = x.shape[-1]
        h = _group_norm(self.norm_groups, c_in, "norm0", nn.swish)(x)
        h = Conv(self.features, (3, 3), padding="SAME", kernel_init=default_init(), name="conv0")(h)
        temb_proj = nn.Dense(self.features, kernel_init=default_init(), name="temb_proj")(nn.swish(temb))
        h = h + temb_proj[:, None, None, :]  # [B, H, W, features]
        h = _group_norm(self.norm_groups, self.features, "norm1", nn.swish)(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = Conv(self.features, (3, 3), padding="SAME", kernel_init=nn.initializers.zeros, name="conv1")(h)
        if c_in != self.features:
            x = nn.Dense(self.features, kernel_init=default_init(), name="skip")(x)  # 1x1 conv (NIN)
        return x + h


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions with a residual connection; zero-init output projection.

    Attributes:
      num_heads: attention heads (channels must divide evenly).
      norm_groups: GroupNorm groups.
    """

    num_heads: int = 1
    norm_groups: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        B, H, W, C = x.shape
        if C % self.num_heads != 0:
            raise ValueError(f"attention: channels={C} not divisible by num_heads={self.num_heads}")
        d = C // self.num_heads
        h = _group_norm(self.norm_groups, C, "norm")(x)
        qkv = nn.Dense(3 * C, kernel_init=default_init(), name="qkv")(h)  # [B, H, W, 3C]
        # split, not index: its gradient is one concatenation instead of three zero-padded copies summed
        q, k, v = (a.reshape(B, H * W, self.num_heads, d) for a in jnp.split(qkv, 3, axis=-1))  # [B, N, heads, d]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(d))
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)  # [B, heads, N, N], in float32
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(B, H, W, C)
        out = nn.Dense(C, kernel_init=nn.initializers.zeros, name="proj_out")(out)
        return x + out


class Downsample(nn.Module):
    """Halves H and W with a stride-2 3x3 conv (or 2x2 average pooling)."""

    with_conv: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.with_conv:
            return Conv(x.shape[-1], (3, 3), strides=(2, 2), padding="SAME", kernel_init=default_init())(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Upsample(nn.Module):
    """Doubles H and W with nearest-neighbour upsampling (followed by a 3x3 conv)."""

    with_conv: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        B, H, W, C = x.shape
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (B, H, 2, W, 2, C)).reshape(B, 2 * H, 2 * W, C)
        if self.with_conv:
            x = Conv(C, (3, 3), padding="SAME", kernel_init=default_init())(x)
        return x


class UNet(nn.Module):
    """DDPM U-Net eps_theta(x_t, t[, y]) for images [B, H, W, C].

    Down path: per level ``num_res_blocks`` ResBlocks (+ attention where the resolution is in
    ``attn_resolutions``) and a downsample (except at the last level); middle: ResBlock, attention,
    ResBlock; up path: ``num_res_blocks + 1`` ResBlocks per level on the concatenated skips, then
    GroupNorm, swish and a zero-initialised 3x3 conv, so a fresh network predicts 0.

    Class conditioning (``num_classes`` set): a learned label embedding is added to the timestep
    embedding; label index ``num_classes`` is the null label used for classifier-free guidance, and
    ``label=None`` means "unconditional" (the null label for every example).

    Attributes:
      out_channels: output channels (default: the input's channels).
      ch: base channel count.
      ch_mult: channel multiplier per resolution level.
      num_res_blocks: residual blocks per level on the down path.
      attn_resolutions: spatial sizes (H) at which self-attention is applied.
      dropout: dropout rate in the residual blocks (train only).
      num_classes: number of classes for conditioning (None: unconditional network).
      num_heads: attention heads.
      norm_groups: GroupNorm groups (must divide every channel count).
      resample_with_conv: conv in the down/upsampling layers.
      fourier_features: exponents n of the input features sin(2^n pi x), cos(2^n pi x) appended to x
        (Kingma et al. 2021: n = 7, 8 resolve the 2/255 grid of 8-bit data, what a likelihood model
        needs at high SNR); () for none.
      remat: rematerialise each residual and attention block in the backward pass with this named policy
        (:data:`gen_jax.nn.REMAT_POLICIES`: ``'full'`` or ``'dots'``; None: keep every activation). Same
        parameters and results; less memory for more compute.
    """

    out_channels: int | None = None
    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    num_classes: int | None = None
    num_heads: int = 1
    norm_groups: int = 32
    resample_with_conv: bool = True
    fourier_features: Sequence[int] = ()
    remat: str | None = None

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, label: jax.Array | None = None, *, train: bool = False
    ) -> jax.Array:
        """Args: x [B, H, W, C] float; t [B] int timesteps; label [B] int or None; train enables dropout."""
        if x.ndim != 4:
            raise ValueError(f"UNet expects x of shape [B, H, W, C]; got {x.shape}")
        B, H, W, C = x.shape
        t = jnp.asarray(t)
        if t.shape != (B,):
            raise ValueError(f"UNet expects t of shape [B]=({B},); got {t.shape}")
        levels = len(self.ch_mult)
        if H % (2 ** (levels - 1)) != 0 or W % (2 ** (levels - 1)) != 0:
            raise ValueError(
                f"image size {H}x{W} must be divisible by 2^(len(ch_mult)-1) = {2 ** (levels - 1)} "
                f"(ch_mult={tuple(self.ch_mult)}); use fewer levels or pad the images"
            )
        temb = TimeEmbedding(self.ch, 4 * self.ch, name="temb")(t)  # [B, 4ch]
        if self.num_classes is not None:
            if label is None:
                label = jnp.full((B,), self.num_classes, jnp.int32)
            elif jnp.shape(label) != (B,):
                raise ValueError(f"label must have shape [B]=({B},); got {jnp.shape(label)}")
            temb = temb + nn.Embed(self.num_classes + 1, 4 * self.ch, name="label_emb")(label)
        temb = temb.astype(x.dtype)  # computed from float32 times; joins the activations in their dtype

        Res, Attn = remat(ResBlock, self.remat, (3,)), remat(AttentionBlock, self.remat)  # noqa: N806
        res_kw = dict(dropout=self.dropout, norm_groups=self.norm_groups)
        attn_kw = dict(num_heads=self.num_heads, norm_groups=self.norm_groups)

        x_in = x
        if self.fourier_features:
            f = jnp.asarray([2.0 ** n * jnp.pi for n in self.fourier_features], jnp.float32).reshape(1, 1, 1, 1, -1)
            xf = (x.astype(jnp.float32)[..., None] * f).reshape(B, H, W, C * len(self.fourier_features))
            x_in = jnp.concatenate([x, jnp.sin(xf).astype(x.dtype), jnp.cos(xf).astype(x.dtype)], axis=-1)
        hs = [Conv(self.ch, (3, 3), padding="SAME", kernel_init=default_init(), name="conv_in")(x_in)]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = Res(self.ch * mult, **res_kw)(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = Attn(**attn_kw)(h)
                hs.append(h)
            if level != levels - 1:
                hs.append(Downsample(self.resample_with_conv)(hs[-1]))

        h = hs[-1]
        h = Res(h.shape[-1], **res_kw)(h, temb, train)
        h = Attn(**attn_kw)(h)
        h = Res(h.shape[-1], **res_kw)(h, temb, train)

        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = Res(self.ch * mult, **res_kw)(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = Attn(**attn_kw)(h)
            if level != 0:
                h = Upsample(self.resample_with_conv)(h)
        assert not hs, "every skip connection is consumed"

        h = _group_norm(self.norm_groups, h.shape[-1], "norm_out", nn.swish)(h)
        out_ch = self.out_channels if self.out_channels is not None else C
        return Conv(out_ch, (3, 3), padding="SAME", kernel_init=nn.initializers.zeros, name="conv_out")(h)
