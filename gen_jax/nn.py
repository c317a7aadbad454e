"""Layers shared by several families."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

UPSAMPLE_KINDS = ("transpose", "subpixel")
DOWNSAMPLE_KINDS = ("strided", "space_to_depth")


def depth_to_space(h: jax.Array, block: int) -> jax.Array:
    """``[B, H, W, b*b*C] -> [B, b*H, b*W, C]``: channel ``(a*b + c)*C + k`` of pixel ``(i, j)`` goes to
    pixel ``(b*i + a, b*j + c)``, channel ``k``."""
    n, height, width, depth = h.shape
    if depth % (block * block):
        raise ValueError(f"depth_to_space: {depth} channels are not divisible by block^2 = {block * block}")
    c = depth // (block * block)
    h = h.reshape(n, height, width, block, block, c).transpose(0, 1, 3, 2, 4, 5)
    return h.reshape(n, height * block, width * block, c)


def space_to_depth(h: jax.Array, block: int) -> jax.Array:
    """``[B, b*H, b*W, C] -> [B, H, W, b*b*C]``, the inverse of :func:`depth_to_space`."""
    n, height, width, c = h.shape
    if height % block or width % block:
        raise ValueError(f"space_to_depth: H, W = {height}, {width} are not divisible by block = {block}")
    h = h.reshape(n, height // block, block, width // block, block, c).transpose(0, 1, 3, 2, 4, 5)
    return h.reshape(n, height // block, width // block, block * block * c)


def downsample_layer(features: int, kind: str = "strided",
                     kernel: int = 4) -> tuple[nn.Module, Callable[[jax.Array], jax.Array]]:
    """A layer halving H and W, as ``(conv, prepare)``: the layer is ``conv(prepare(h))``.

    Split in two so that a caller can wrap the convolution (e.g. in ``nn.SpectralNorm``). Create it
    inside a compact scope; :class:`Downsample2x` is the plain module.

    Args:
      features: output channels.
      kind: ``'strided'``: a ``kernel x kernel`` stride-2 convolution ('SAME'); ``'space_to_depth'``:
        pad H and W by 1 on each side, move each 2x2 block into the channels, then a 2x2 stride-1
        'VALID' convolution. Each output reads input rows and columns 2i-1..2i+2, which contain the
        windows of the 4x4 (2i-1..2i+2) and 3x3 (2i..2i+2) 'SAME' stride-2 convolutions, so it can
        represent either exactly (``tests/test_nn.py`` maps them), with every gradient a stride-1
        convolution. Measured on XLA CPU it is not faster (benchmark: single layers 1.4-1.6x slower,
        the DCGAN step 1.07x), so the configs keep 'strided'; it is there to compare on other devices.
      kernel: the strided convolution's kernel size (3 or 4).
    """
    if kind == "strided":
        return nn.Conv(features, (kernel, kernel), strides=(2, 2), padding="SAME"), lambda h: h
    if kind == "space_to_depth":
        def prepare(h: jax.Array) -> jax.Array:
            return space_to_depth(jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0))), 2)
        return nn.Conv(features, (2, 2), padding="VALID"), prepare
    raise ValueError(f"downsample must be one of {DOWNSAMPLE_KINDS}, got {kind!r}")


class Downsample2x(nn.Module):
    """Halves H and W (even): ``[B, 2H, 2W, F_in] -> [B, H, W, features]``; see :func:`downsample_layer`.

    Attributes:
      features: output channels.
      kind: ``'strided'`` or ``'space_to_depth'``.
      kernel: the strided convolution's kernel size (3 or 4).
    """

    features: int
    kind: str = "strided"
    kernel: int = 4

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        conv, prepare = downsample_layer(self.features, self.kind, self.kernel)
        return conv(prepare(h))


class Upsample2x(nn.Module):
    """Doubles H and W: ``[B, H, W, F_in] -> [B, 2H, 2W, features]``.

    Attributes:
      features: output channels.
      kind: ``'transpose'``: a ``kernel x kernel`` stride-2 transposed convolution ('SAME');
        ``'subpixel'``: a 3x3 convolution to ``4 features`` channels, then depth-to-space (Shi et al.,
        2016). For ``kernel`` 3 or 4 every output phase of the transposed convolution reads a window of
        at most 2x2 inputs inside the 3x3 one, so the sub-pixel layer can represent it exactly
        (``tests/test_nn.py`` maps one onto the other). It runs several times faster on CPU, where XLA
        turns the transposed convolution's weight gradient into a slow kernel-dilated convolution.
      kernel: the transposed convolution's kernel size (3 or 4).
    """

    features: int
    kind: str = "transpose"
    kernel: int = 4

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        if self.kind == "transpose":
            return nn.ConvTranspose(self.features, (self.kernel, self.kernel), strides=(2, 2), padding="SAME")(h)
        if self.kind == "subpixel":
            return depth_to_space(nn.Conv(4 * self.features, (3, 3), padding="SAME")(h), 2)
        raise ValueError(f"upsample must be one of {UPSAMPLE_KINDS}, got {self.kind!r}")
