"""Bijector layers of normalizing flows, each with its explicit, analytic log|det J|.

One contract for every layer (the seed's ``f`` maps data -> latent)::

    z, log_det = layer.forward(x)    # z = f(x),        log_det = log|det df/dx|        [B]
    x, log_det = layer.inverse(z)    # x = f^{-1}(z),   log_det = log|det df^{-1}/dz|   [B]
                                     #                            = -forward log_det at that x

``log_det`` is summed over the event (every axis but the batch axis). The log-determinants are
written out in closed form; autodiff Jacobians appear only in the tests that check them.

Layers with parameters are Flax linen modules whose parameters are created lazily from the first
input (shapes are inferred), so ``module.init(key, x)`` on a data batch initialises them; ActNorm
uses that first batch for its data-dependent initialisation::

    layer = AffineCoupling(mask="checkerboard", hidden=(64,))
    variables = layer.init(key, x)                                 # x: [B, H, W, C]
    z, log_det = layer.apply(variables, x, method="forward")
    x_again, minus_log_det = layer.apply(variables, z, method="inverse")
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from gen_jax.flows.conditioners import make_conditioner
from gen_jax.ops import sum_except_batch

Array = jax.Array


def _zeros_like_batch(x: Array) -> Array:
    return jnp.zeros(x.shape[:1], x.dtype)


def _channel_shape(x: Array) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector against ``x`` without rank promotion."""
    return (1,) * (x.ndim - 1) + (x.shape[-1],)


def _num_positions(x: Array) -> int:
    """Number of positions sharing per-channel parameters: H*W for images, 1 for vectors."""
    return int(np.prod(x.shape[1:-1], dtype=np.int64))


def _soft_clamp(raw: Array, bound: float) -> Array:
    """``bound * tanh(raw / bound)``: identity near 0, |.| < bound everywhere (bounded log-scales)."""
    return bound * jnp.tanh(raw / bound)


class Bijector(nn.Module):
    """Base of every layer: ``forward(x) -> (z, log_det)``, ``inverse(z) -> (x, log_det)``.

    Subclasses implement ``_transform(x, inverse)`` (usually ``@nn.compact``) or override
    ``forward``/``inverse``. Calling the module is ``forward``.
    """

    def __call__(self, x: Array) -> tuple[Array, Array]:
        return self.forward(x)

    def forward(self, x: Array) -> tuple[Array, Array]:
        """``z = f(x)`` and ``log|det df/dx|`` per example ``[B]``."""
        return self._transform(x, inverse=False)

    def inverse(self, z: Array) -> tuple[Array, Array]:
        """``x = f^{-1}(z)`` and ``log|det df^{-1}/dz|`` per example ``[B]``."""
        return self._transform(z, inverse=True)

    def _transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:  # pragma: no cover
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Composition.


class Chain(Bijector):
    """``f = f_n o ... o f_1``: log|det J_f| = sum_i log|det J_{f_i}|; the inverse runs backwards.

    Attributes:
      layers: the bijectors ``f_1, ..., f_n`` in data -> latent order.
    """

    layers: Sequence[nn.Module]

    def forward(self, x: Array) -> tuple[Array, Array]:
        log_det = _zeros_like_batch(x)
        for layer in self.layers:
            x, ld = layer.forward(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, z: Array) -> tuple[Array, Array]:
        log_det = _zeros_like_batch(z)
        for layer in reversed(self.layers):
            z, ld = layer.inverse(z)
            log_det = log_det + ld
        return z, log_det


# ---------------------------------------------------------------------------------------------
# Fixed (parameter-free) bijectors.


class Affine(Bijector):
    """Fixed element-wise affine map ``z = scale * x + shift``; log|det| = D log|scale|.

    Glow's pre-processing is ``Affine(shift=-0.5)`` (data in [0, 1) -> [-0.5, 0.5)).
    """

    scale: float = 1.0
    shift: float = 0.0

    def _transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        if self.scale == 0:
            raise ValueError("Affine scale must be non-zero, got 0")
        d = int(np.prod(x.shape[1:], dtype=np.int64))
        log_det = jnp.full(x.shape[:1], d * math.log(abs(self.scale)), x.dtype)
        if inverse:
            return (x - self.shift) / self.scale, -log_det
        return self.scale * x + self.shift, log_det


class Logit(Bijector):
    """Logit pre-processing of data in [0, 1] (Dinh et al. 2017).

    ``z = logit(p)`` with ``p = alpha + (1 - 2 alpha) x`` (alpha keeps p away from 0 and 1), and

        log|det dz/dx| = sum_i [ log(1 - 2 alpha) - log p_i - log(1 - p_i) ]
                       = sum_i [ log(1 - 2 alpha) + softplus(z_i) + softplus(-z_i) ].

    The inverse is ``x = (sigmoid(z) - alpha) / (1 - 2 alpha)``. ``p`` is clipped to
    [eps, 1 - eps] (float eps) so inputs at or outside the ends of [0, 1] give finite values.
    """

    alpha: float = 1e-6

    def _transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        if not 0.0 <= self.alpha < 0.5:
            raise ValueError(f"Logit alpha must be in [0, 0.5), got {self.alpha!r}")
        scale = 1.0 - 2.0 * self.alpha
        if inverse:
            z = x
            y = (jax.nn.sigmoid(z) - self.alpha) / scale
        else:
            eps = float(jnp.finfo(x.dtype).eps)
            p = jnp.clip(self.alpha + scale * x, eps, 1.0 - eps)
            z = jnp.log(p) - jnp.log1p(-p)
            y = z
        log_det = sum_except_batch(math.log(scale) + jax.nn.softplus(z) + jax.nn.softplus(-z))
        return y, (-log_det if inverse else log_det)


class Permute(Bijector):
    """Fixed permutation of the last axis (features / channels); log|det| = 0.

    Attributes:
      kind: ``'reverse'`` or ``'random'`` (a fixed permutation drawn from ``seed``).
      seed: seed of the random permutation.
    """

    kind: str = "reverse"
    seed: int = 0

    def permutation(self, dim: int) -> np.ndarray:
        """The permutation ``perm`` with ``z[..., i] = x[..., perm[i]]``."""
        if self.kind == "reverse":
            return np.arange(dim)[::-1].copy()
        if self.kind == "random":
            return np.random.default_rng(self.seed).permutation(dim)
        raise ValueError(f"Permute kind must be 'reverse' or 'random', got {self.kind!r}")

    def _transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        perm = self.permutation(x.shape[-1])
        if inverse:
            perm = np.argsort(perm)
        return jnp.take(x, perm, axis=-1), _zeros_like_batch(x)


class Squeeze(Bijector):
    """Space-to-depth ``[B, H, W, C] -> [B, H/2, W/2, 4C]`` (a permutation; log|det| = 0)."""

    def _transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        if x.ndim != 4:
            raise ValueError(f"Squeeze expects [B, H, W, C], got shape {x.shape}")
        b, h, w, c = x.shape
        if inverse:
            if c % 4:
                raise ValueError(f"Squeeze.inverse needs channels divisible by 4, got {c}")
            y = x.reshape(b, h, w, 2, 2, c // 4).transpose(0, 1, 3, 2, 4, 5)
            y = y.reshape(b, 2 * h, 2 * w, c // 4)
        else:
            if h % 2 or w % 2:
                raise ValueError(f"Squeeze needs even height and width, got {h}x{w}")
            y = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
            y = y.reshape(b, h // 2, w // 2, 4 * c)
        return y, _zeros_like_batch(x)

    @staticmethod
    def output_shape(shape: Sequence[int]) -> tuple[int, ...]:
        """Per-example shape after squeezing ``(H, W, C) -> (H/2, W/2, 4C)``."""
        h, w, c = shape
        return (h // 2, w // 2, 4 * c)


# ---------------------------------------------------------------------------------------------
# Normalisation and linear mixing.


class ActNorm(Bijector):
    """Per-channel affine map with data-dependent init (Kingma & Dhariwal 2018).

    ``z = x * exp(log_scale) + bias``; log|det| = (H*W) * sum_c log_scale_c (H*W = 1 for vectors).
    When created by a *forward* call (``init`` with a data batch), the parameters are set from that
    batch so ``z`` has zero mean and unit variance per channel:
    ``log_scale = -log(std + eps)``, ``bias = -mean * exp(log_scale)``.
    Created by an inverse call, it starts as the identity.
    """

    eps: float = 1e-6

    @nn.compact
    def _transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        axes = tuple(range(x.ndim - 1))
        channels = (x.shape[-1],)

        def init_log_scale(rng, shape):
            del rng
            if inverse:
                return jnp.zeros(shape, x.dtype)
            return -jnp.log(jnp.std(x, axis=axes) + self.eps)

        log_scale = self.param("log_scale", init_log_scale, channels)

        def init_bias(rng, shape):
            del rng
            if inverse:
                return jnp.zeros(shape, x.dtype)
            return -jnp.mean(x, axis=axes) * jnp.exp(log_scale)

        bias = self.param("bias", init_bias, channels)
        log_scale_b = log_scale.reshape(_channel_shape(x))
        bias_b = bias.reshape(_channel_shape(x))
        log_det = jnp.full(x.shape[:1], _num_positions(x), x.dtype) * jnp.sum(log_scale)
        if inverse:
            return (x - bias_b) * jnp.exp(-log_scale_b), -log_det
        return x * jnp.exp(log_scale_b) + bias_b, log_det


def _random_rotation(dim: int, seed: int) -> np.ndarray:
    """A random orthogonal matrix (QR of a Gaussian matrix, sign-fixed) from a fixed seed."""
    a = np.random.default_rng(seed).standard_normal((dim, dim))
    q, r = np.linalg.qr(a)
    return q * np.sign(np.diag(r))[None, :]


class Invertible1x1Conv(Bijector):
    """Invertible 1x1 convolution ``z[..., :] = W x[..., :]`` at every position (Glow).

    Plain: ``W`` is a free matrix; log|det| = H*W * log|det W| (slogdet).
    LU (``lu=True``): ``W = P L (U + diag(sign * exp(log_s)))`` with P a fixed permutation, L unit
    lower-triangular, U strictly upper-triangular; log|det| = H*W * sum log|s|.
    Both start from a random rotation drawn from ``seed`` (P and sign are fixed constants derived
    from it, so the parameters are only ``lower``, ``upper``, ``log_s``, resp. ``kernel``).
    On ``[B, D]`` vectors it is an invertible linear layer (H*W = 1).
    """

    lu: bool = True
    seed: int = 0

    @nn.compact
    def _transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        c = x.shape[-1]
        w0 = _random_rotation(c, self.seed)
        if self.lu:
            p, l0, u0 = scipy.linalg.lu(w0)
            s0 = np.diag(u0)
            sign = jnp.asarray(np.sign(s0), x.dtype)
            lower = self.param("lower", lambda rng, s: jnp.asarray(np.tril(l0, -1), x.dtype), (c, c))
            upper = self.param("upper", lambda rng, s: jnp.asarray(np.triu(u0, 1), x.dtype), (c, c))
            log_s = self.param("log_s", lambda rng, s: jnp.asarray(np.log(np.abs(s0)), x.dtype), (c,))
            eye = jnp.eye(c, dtype=x.dtype)
            l_mat = jnp.tril(lower, -1) + eye
            u_mat = jnp.triu(upper, 1) + jnp.diag(sign * jnp.exp(log_s))
            p_mat = jnp.asarray(p, x.dtype)
            log_det_w = jnp.sum(log_s)
            if inverse:
                # W^{-1} = U^{-1} L^{-1} P^T, by two triangular solves.
                l_inv = jax.scipy.linalg.solve_triangular(l_mat, eye, lower=True, unit_diagonal=True)
                u_inv = jax.scipy.linalg.solve_triangular(u_mat, eye, lower=False)
                w = u_inv @ l_inv @ p_mat.T
            else:
                w = p_mat @ l_mat @ u_mat
        else:
            kernel = self.param("kernel", lambda rng, s: jnp.asarray(w0, x.dtype), (c, c))
            log_det_w = jnp.linalg.slogdet(kernel)[1]
            w = jnp.linalg.inv(kernel) if inverse else kernel
        y = jnp.einsum("...i,ji->...j", x, w)
        log_det = jnp.full(x.shape[:1], _num_positions(x), x.dtype) * log_det_w
        return y, (-log_det if inverse else log_det)


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

    @nn.compact
    def _transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        if self.mask == "checkerboard":
            return self._checkerboard(x, inverse)
        idx_a, idx_b = _partition(x.shape[-1], self.mask, self.parity)
        x_a, x_b = _split(x, idx_a, idx_b)
        net = make_conditioner(x.ndim, self.hidden, 2 * idx_b.size, self.num_res_blocks)
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
        net = make_conditioner(4, self.hidden, 2 * c, self.num_res_blocks)
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

    @nn.compact
    def _transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        sign = -1.0 if inverse else 1.0
        if self.mask == "checkerboard":
            if x.ndim != 4:
                raise ValueError(f"checkerboard masks need [B, H, W, C] inputs, got shape {x.shape}")
            b, h, w, c = x.shape
            mask = jnp.asarray(checkerboard(h, w, self.parity), x.dtype)
            net_in = jnp.concatenate([x * mask, jnp.broadcast_to(mask, (b, h, w, 1))], axis=-1)
            t = make_conditioner(4, self.hidden, c, self.num_res_blocks)(net_in) * (1.0 - mask)
            return x + sign * t, _zeros_like_batch(x)
        idx_a, idx_b = _partition(x.shape[-1], self.mask, self.parity)
        x_a, x_b = _split(x, idx_a, idx_b)
        t = make_conditioner(x.ndim, self.hidden, idx_b.size, self.num_res_blocks)(x_a)
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

    @nn.compact
    def _transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        if self.num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {self.num_bins}")
        k = self.num_bins
        idx_a, idx_b = _partition(x.shape[-1], self.mask, self.parity)
        x_a, x_b = _split(x, idx_a, idx_b)
        net = make_conditioner(x.ndim, self.hidden, idx_b.size * (3 * k - 1), self.num_res_blocks)
        theta = net(x_a).reshape(*x_b.shape, 3 * k - 1)
        y_b, ld = rational_quadratic_spline(
            x_b, theta[..., :k], theta[..., k : 2 * k], theta[..., 2 * k :],
            bound=self.bound, inverse=inverse,
        )
        return _merge(x_a, y_b, idx_a, idx_b), sum_except_batch(ld)


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


# ---------------------------------------------------------------------------------------------
# Multi-scale architecture (Dinh et al. 2017; Glow).


def output_shape(layer: nn.Module, shape: Sequence[int]) -> tuple[int, ...]:
    """Per-example output shape of ``layer``: Squeeze changes it, every other bijector keeps it."""
    if isinstance(layer, Squeeze):
        return Squeeze.output_shape(shape)
    if isinstance(layer, Chain):
        for sub in layer.layers:
            shape = output_shape(sub, shape)
    return tuple(shape)


class MultiScaleFlow(Bijector):
    """Multi-scale flow: after every level but the last, half the channels leave for the latent.

    ``h_1 = level_1(x)``; ``(h_1', z_1) = split(h_1)`` (z_1 = second half of the channels, factored
    out, with a standard normal prior); ``h_2 = level_2(h_1')``; ...; ``z_L = level_L(h_{L-1}')``.
    The latent ``z = concat(flatten(z_1), ..., flatten(z_L))`` is reshaped to the input shape, so
    log|det| = sum of the levels' log-dets (splitting and reshaping are volume preserving).
    Glow's learned split prior N(z_i; mu(h_i'), sigma(h_i')) is an affine coupling on the factored
    half conditioned on the kept half, placed at the end of the level (``AffineCoupling`` with
    ``mask='channel', parity=0``).

    Attributes:
      levels: the levels (shape preserving except for ``Squeeze`` layers inside them).
    """

    levels: Sequence[nn.Module]

    def forward(self, x: Array) -> tuple[Array, Array]:
        b = x.shape[0]
        log_det = _zeros_like_batch(x)
        parts = []
        h = x
        for i, level in enumerate(self.levels):
            h, ld = level.forward(h)
            log_det = log_det + ld
            if i < len(self.levels) - 1:
                c = h.shape[-1]
                if c % 2:
                    raise ValueError(f"factoring out half the channels needs an even count, got {c}")
                parts.append(h[..., c // 2 :].reshape(b, -1))
                h = h[..., : c // 2]
        parts.append(h.reshape(b, -1))
        return jnp.concatenate(parts, axis=1).reshape(x.shape), log_det

    def inverse(self, z: Array) -> tuple[Array, Array]:
        b = z.shape[0]
        shape = tuple(z.shape[1:])
        out_shapes = []
        for i, level in enumerate(self.levels):
            shape = output_shape(level, shape)
            if i < len(self.levels) - 1:
                out_shapes.append(shape[:-1] + (shape[-1] - shape[-1] // 2,))
                shape = shape[:-1] + (shape[-1] // 2,)
        sizes = [int(np.prod(s)) for s in out_shapes]
        flat = z.reshape(b, -1)
        offsets = np.cumsum([0] + sizes)
        h = flat[:, offsets[-1] :].reshape((b,) + shape)
        log_det = _zeros_like_batch(z)
        for i in reversed(range(len(self.levels))):
            if i < len(self.levels) - 1:
                part = flat[:, offsets[i] : offsets[i + 1]].reshape((b,) + out_shapes[i])
                h = jnp.concatenate([h, part], axis=-1)
            h, ld = self.levels[i].inverse(h)
            log_det = log_det + ld
        return h, log_det
