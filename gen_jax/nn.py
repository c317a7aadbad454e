"""Layers shared by several families."""

from __future__ import annotations

import flax.linen as nn
import jax

UPSAMPLE_KINDS = ("transpose", "subpixel")


def depth_to_space(h: jax.Array, block: int) -> jax.Array:
    """``[B, H, W, b*b*C] -> [B, b*H, b*W, C]``: channel ``(a*b + c)*C + k`` of pixel ``(i, j)`` goes to
    pixel ``(b*i + a, b*j + c)``, channel ``k``."""
    n, height, width, depth = h.shape
    if depth % (block * block):
        raise ValueError(f"depth_to_space: {depth} channels are not divisible by block^2 = {block * block}")
    c = depth // (block * block)
    h = h.reshape(n, height, width, block, block, c).transpose(0, 1, 3, 2, 4, 5)
    return h.reshape(n, height * block, width * block, c)


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
