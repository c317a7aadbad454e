"""Conditioner networks of coupling layers: an MLP for vectors and a conv net for images.

A conditioner maps the untouched half ``x_a`` of a coupling layer to the parameters of the
element-wise transform of the other half. Its output layer is zero-initialised, so a freshly
initialised coupling layer is the identity map (big_vision / Glow habit).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from gen_jax.nn import Conv, remat
from gen_jax.precision import Policy

_zeros = nn.initializers.zeros


class MLP(nn.Module):
    """``x [B, D_in] -> [B, out_features]``: GELU hidden layers, zero-initialised output layer.

    Attributes:
      hidden: widths of the hidden layers.
      out_features: output width.
    """

    hidden: Sequence[int]
    out_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.gelu(nn.Dense(width)(x))
        return nn.Dense(self.out_features, kernel_init=_zeros, bias_init=_zeros)(x)


class ConvNet(nn.Module):
    """``x [B, H, W, C_in] -> [B, H, W, out_channels]``, the Glow coupling network.

    conv3x3(hidden[0]) -> ReLU -> conv1x1(hidden[i]) -> ReLU ... -> ``num_res_blocks`` residual
    blocks ``h + conv3x3(ReLU(conv3x3(ReLU(h))))`` -> ReLU -> conv3x3(out, zero-initialised).
    With ``hidden=(512, 512)`` and no residual blocks this is the network of Kingma & Dhariwal (2018).

    Attributes:
      hidden: channel widths: the first is a 3x3 conv, the rest 1x1 convs.
      out_channels: output channels.
      num_res_blocks: residual blocks (RealNVP-style ResNet conditioner) after the stack.
    """

    hidden: Sequence[int]
    out_channels: int
    num_res_blocks: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.relu(Conv(self.hidden[0], (3, 3))(x))
        for width in self.hidden[1:]:
            h = nn.relu(Conv(width, (1, 1))(h))
        width = self.hidden[-1]
        for _ in range(self.num_res_blocks):
            r = Conv(width, (3, 3))(nn.relu(h))
            h = h + Conv(width, (3, 3))(nn.relu(r))
        if self.num_res_blocks:
            h = nn.relu(h)
        return Conv(self.out_channels, (3, 3), kernel_init=_zeros, bias_init=_zeros)(h)


def make_conditioner(
    rank: int, hidden: Sequence[int], out_features: int, num_res_blocks: int = 0, precision: Policy = Policy(),
    remat_policy: str | None = None,
):
    """An MLP for ``rank == 2`` inputs ``[B, D]``, a ConvNet for ``rank == 4`` inputs ``[B, H, W, C]``, computing
    in ``precision``'s dtype (float32 out; :meth:`gen_jax.precision.Policy.network`) and rematerialised with
    ``remat_policy`` (:func:`gen_jax.nn.remat`). Build it inside the coupling's compact method."""
    if not hidden:
        raise ValueError(f"hidden must name at least one layer width, got {hidden!r}")
    if rank == 2:
        return precision.network(remat(MLP, remat_policy), tuple(hidden), out_features)
    if rank == 4:
        return precision.network(remat(ConvNet, remat_policy), tuple(hidden), out_features, num_res_blocks)
    raise ValueError(f"conditioners take [B, D] or [B, H, W, C] inputs, got rank {rank}")
