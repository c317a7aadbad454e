"""Coupling layers (Dinh et al. 2015, 2017; Durkan et al. 2019): half the features, chosen by a mask,
condition an elementwise bijection of the other half, so the log-determinant is a sum of its logs."""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.flows.bijectors import Bijector, _soft_clamp, _zeros_like_batch
from gen_jax.flows.conditioners import make_conditioner
from gen_jax.ops import sum_except_batch
from gen_jax.precision import Policy

Array = jax.Array


# ---------------------------------------------------------------------------------------------
# Coupling layers.

_LAST_AXIS_MASKS = ("channel", "alternate")


def _partition(dim: int, mask: str, parity: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (a, b) of the last axis: ``x_a`` conditions, ``x_b`` is transformed."""
    if dim < 2:
        raise ValueError(f"a coupling layer needs at least 2 features/channels, got {dim}")
    idx = np.arange(dim)
    if mask == "channel":
        first, second = idx[: dim // 2], idx[dim // 2 :]
    elif mask == "alternate":
        first, second = idx[0::2], idx[1::2]
    else:
        raise ValueError(f"mask must be one of {_LAST_AXIS_MASKS + ('checkerboard',)}, got {mask!r}")
    if parity not in (0, 1):
        raise ValueError(f"parity must be 0 or 1, got {parity!r}")
    return (first, second) if parity == 0 else (second, first)


def _split(x: Array, idx_a: np.ndarray, idx_b: np.ndarray) -> tuple[Array, Array]:
    return jnp.take(x, idx_a, axis=-1), jnp.take(x, idx_b, axis=-1)


def _merge(y_a: Array, y_b: Array, idx_a: np.ndarray, idx_b: np.ndarray) -> Array:
    order = np.concatenate([idx_a, idx_b])
    y = jnp.concatenate([y_a, y_b], axis=-1)
    if np.array_equal(order, np.arange(order.size)):
        return y
    return jnp.take(y, np.argsort(order), axis=-1)


def checkerboard(height: int, width: int, parity: int) -> np.ndarray:
    """``[1, H, W, 1]`` float mask: 1 where ``(h + w + parity)`` is even (conditioning pixels)."""
    hh, ww = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return ((hh + ww + parity) % 2 == 0).astype(np.float32)[None, :, :, None]


class AffineCoupling(Bijector):
    """Affine coupling layer (RealNVP, Dinh et al. 2017).

    Split ``x = (x_a, x_b)`` by a mask; then
    ``z_a = x_a``,  ``z_b = x_b * exp(s(x_a)) + t(x_a)``,  log|det dz/dx| = sum s(x_a),
    with ``s = max_log_scale * tanh(s_raw / max_log_scale)`` (bounded log-scale). The conditioner's
    output layer is zero-initialised, so a fresh layer is the identity.

    Attributes:
      mask: ``'channel'`` (first/second half of the last axis), ``'alternate'`` (even/odd indices of
        the last axis) or ``'checkerboard'`` (spatial, images only; the conditioner sees ``x * b``
        and the mask ``b`` as an extra channel).
      parity: 0 or 1; 1 swaps the roles of the two halves.
      hidden: conditioner widths (MLP for ``[B, D]``, ConvNet channels for ``[B, H, W, C]``).
      num_res_blocks: residual blocks of the ConvNet conditioner (images).
      max_log_scale: bound on |s|.
    """

    mask: str = "channel"
    parity: int = 0
    hidden: Sequence[int] = (64, 64)
    num_res_blocks: int = 0
    max_log_scale: float = 3.0
    precision: Policy = Policy()
    remat: str | None = None

    @nn.compact
    def _transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        if self.mask == "checkerboard":
            return self._checkerboard(x, inverse)
        idx_a, idx_b = _partition(x.shape[-1], self.mask, self.parity)
        x_a, x_b = _split(x, idx_a, idx_b)
        net = make_conditioner(x.ndim, self.hidden, 2 * idx_b.size, self.num_res_blocks, self.precision, self.remat)
        out = net(x_a)
        s = _soft_clamp(out[..., : idx_b.size], self.max_log_scale)
        t = out[..., idx_b.size :]
        if inverse:
            y_b = (x_b - t) * jnp.exp(-s)
        else:
            y_b = x_b * jnp.exp(s) + t
        log_det = sum_except_batch(s)
        return _merge(x_a, y_b, idx_a, idx_b), (-log_det if inverse else log_det)

    def _checkerboard(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        if x.ndim != 4:
            raise ValueError(f"checkerboard masks need [B, H, W, C] inputs, got shape {x.shape}")
        if self.parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, got {self.parity!r}")
        b, h, w, c = x.shape
        mask = jnp.asarray(checkerboard(h, w, self.parity), x.dtype)  # [1, H, W, 1]
        net_in = jnp.concatenate([x * mask, jnp.broadcast_to(mask, (b, h, w, 1))], axis=-1)
        net = make_conditioner(4, self.hidden, 2 * c, self.num_res_blocks, self.precision, self.remat)
        out = net(net_in)
        s = _soft_clamp(out[..., :c], self.max_log_scale) * (1.0 - mask)
        t = out[..., c:] * (1.0 - mask)
        y = (x - t) * jnp.exp(-s) if inverse else x * jnp.exp(s) + t
        log_det = sum_except_batch(s)
        return y, (-log_det if inverse else log_det)


class AdditiveCoupling(Bijector):
    """Additive coupling layer (NICE, Dinh et al. 2015): volume preserving.

    ``z_a = x_a``, ``z_b = x_b + t(x_a)``; log|det| = 0. Attributes as in :class:`AffineCoupling`.
    """

    mask: str = "channel"
    parity: int = 0
    hidden: Sequence[int] = (64, 64)
    num_res_blocks: int = 0
    precision: Policy = Policy()
    remat: str | None = None

    @nn.compact
    def _transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        sign = -1.0 if inverse else 1.0
        if self.mask == "checkerboard":
            if x.ndim != 4:
                raise ValueError(f"checkerboard masks need [B, H, W, C] inputs, got shape {x.shape}")
            b, h, w, c = x.shape
            mask = jnp.asarray(checkerboard(h, w, self.parity), x.dtype)
            net_in = jnp.concatenate([x * mask, jnp.broadcast_to(mask, (b, h, w, 1))], axis=-1)
            net = make_conditioner(4, self.hidden, c, self.num_res_blocks, self.precision, self.remat)
            t = net(net_in) * (1.0 - mask)
            return x + sign * t, _zeros_like_batch(x)
        idx_a, idx_b = _partition(x.shape[-1], self.mask, self.parity)
        x_a, x_b = _split(x, idx_a, idx_b)
        net = make_conditioner(x.ndim, self.hidden, idx_b.size, self.num_res_blocks, self.precision, self.remat)
        t = net(x_a)
        return _merge(x_a, x_b + sign * t, idx_a, idx_b), _zeros_like_batch(x)


# ---------------------------------------------------------------------------------------------
# Rational-quadratic splines (Durkan et al. 2019).


def _softplus_inverse(y: float) -> float:
    return math.log(math.expm1(y))


def rational_quadratic_spline(
    x: Array,
    unnormalized_widths: Array,
    unnormalized_heights: Array,
    unnormalized_derivatives: Array,
    *,
    bound: float,
    inverse: bool = False,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Array, Array]:
    """Monotone rational-quadratic spline on [-B, B] with identity (linear) tails outside.

    With K bins of widths w_k, heights h_k, knot derivatives d_k (d_0 = d_K = 1 so the tails join
    smoothly), for x in bin k: ``xi = (x - x_k) / w_k``, ``s_k = h_k / w_k``,

        y = y_k + h_k [s_k xi^2 + d_k xi (1 - xi)] / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)]
        dy/dx = s_k^2 [d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2]
                / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)]^2.

    The inverse solves ``a xi^2 + b xi + c = 0`` for the root in [0, 1] by the stable formula
    ``xi = 2c / (-b - sqrt(b^2 - 4ac))`` (discriminant clipped at 0, xi clipped to [0, 1]).
    Zero unnormalised parameters give equal bins and unit derivatives: the identity.

    Args:
      x: inputs ``[...]``.
      unnormalized_widths, unnormalized_heights: ``[..., K]``.
      unnormalized_derivatives: ``[..., K - 1]`` (interior knots).
      bound: B; the spline acts on [-B, B], the identity elsewhere.
      inverse: evaluate the inverse map.

    Returns:
      ``(y, log|dy/dx|)`` element-wise (for ``inverse``: ``(x, log|dx/dy|)``), both shaped like ``x``.
    """
    num_bins = unnormalized_widths.shape[-1]
    if unnormalized_heights.shape[-1] != num_bins or unnormalized_derivatives.shape[-1] != num_bins - 1:
        raise ValueError(
            "expected widths/heights [..., K] and derivatives [..., K-1], got "
            f"{unnormalized_widths.shape}, {unnormalized_heights.shape}, {unnormalized_derivatives.shape}"
        )
    if min_bin_width * num_bins >= 1 or min_bin_height * num_bins >= 1:
        raise ValueError(f"minimal bin size too large for {num_bins} bins")

    def knots(unnormalized, min_size):
        size = jax.nn.softmax(unnormalized, axis=-1)
        size = min_size + (1.0 - min_size * num_bins) * size
        cum = jnp.cumsum(size, axis=-1)
        cum = jnp.concatenate([jnp.zeros_like(cum[..., :1]), cum], axis=-1)
        cum = 2.0 * bound * cum - bound
        cum = cum.at[..., 0].set(-bound).at[..., -1].set(bound)  # [..., K + 1]
        return cum, cum[..., 1:] - cum[..., :-1]

    knots_x, widths = knots(unnormalized_widths, min_bin_width)
    knots_y, heights = knots(unnormalized_heights, min_bin_height)
    interior = min_derivative + jax.nn.softplus(
        unnormalized_derivatives + _softplus_inverse(1.0 - min_derivative)
    )
    ones = jnp.ones_like(interior[..., :1])
    derivs = jnp.concatenate([ones, interior, ones], axis=-1)  # [..., K + 1]

    inside = (x >= -bound) & (x <= bound)
    xc = jnp.clip(x, -bound, bound)
    search = knots_y if inverse else knots_x
    k = jnp.sum(xc[..., None] >= search[..., 1:-1], axis=-1)[..., None]  # [..., 1] bin index

    def pick(a):
        return jnp.take_along_axis(a, k, axis=-1)[..., 0]

    x_k, w_k, y_k, h_k = pick(knots_x), pick(widths), pick(knots_y), pick(heights)
    d_k, d_k1 = pick(derivs[..., :-1]), pick(derivs[..., 1:])
    s_k = h_k / w_k

    if inverse:
        dy = xc - y_k
        a = h_k * (s_k - d_k) + dy * (d_k1 + d_k - 2.0 * s_k)
        b = h_k * d_k - dy * (d_k1 + d_k - 2.0 * s_k)
        c = -s_k * dy
        disc = jnp.maximum(b * b - 4.0 * a * c, 0.0)
        xi = jnp.clip(2.0 * c / (-b - jnp.sqrt(disc)), 0.0, 1.0)
        out = x_k + xi * w_k
    else:
        xi = jnp.clip((xc - x_k) / w_k, 0.0, 1.0)

    xi1 = xi * (1.0 - xi)
    denom = s_k + (d_k1 + d_k - 2.0 * s_k) * xi1
    if not inverse:
        out = y_k + h_k * (s_k * xi * xi + d_k * xi1) / denom
    deriv_num = s_k * s_k * (d_k1 * xi * xi + 2.0 * s_k * xi1 + d_k * (1.0 - xi) ** 2)
    log_abs_det = jnp.log(deriv_num) - 2.0 * jnp.log(denom)
    if inverse:
        log_abs_det = -log_abs_det
    return jnp.where(inside, out, x), jnp.where(inside, log_abs_det, 0.0)


class SplineCoupling(Bijector):
    """Rational-quadratic spline coupling layer (Neural Spline Flows, Durkan et al. 2019).

    ``z_a = x_a``, ``z_b = RQS(x_b; theta(x_a))`` element-wise, with K bins on [-B, B] and identity
    tails; log|det| = sum_i log|dRQS/dx_i|. The conditioner emits 3K - 1 numbers per transformed
    element (K widths, K heights, K - 1 interior derivatives); it is zero-initialised (identity).

    Attributes:
      mask: ``'channel'`` or ``'alternate'`` (last axis).
      parity: 0 or 1.
      hidden: conditioner widths.
      num_bins: K.
      bound: B (tail bound).
      num_res_blocks: residual blocks of the ConvNet conditioner (images).
    """

    mask: str = "alternate"
    parity: int = 0
    hidden: Sequence[int] = (64, 64)
    num_bins: int = 8
    bound: float = 5.0
    num_res_blocks: int = 0
    precision: Policy = Policy()
    remat: str | None = None

    @nn.compact
    def _transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        if self.num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {self.num_bins}")
        k = self.num_bins
        idx_a, idx_b = _partition(x.shape[-1], self.mask, self.parity)
        x_a, x_b = _split(x, idx_a, idx_b)
        net = make_conditioner(x.ndim, self.hidden, idx_b.size * (3 * k - 1), self.num_res_blocks, self.precision,
                               self.remat)
        theta = net(x_a).reshape(*x_b.shape, 3 * k - 1)
        y_b, ld = rational_quadratic_spline(
            x_b, theta[..., :k], theta[..., k : 2 * k], theta[..., 2 * k :],
            bound=self.bound, inverse=inverse,
        )
        return _merge(x_a, y_b, idx_a, idx_b), sum_except_batch(ld)
