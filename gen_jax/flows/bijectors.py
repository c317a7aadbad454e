"""Bijector layers of normalizing flows, each with its explicit, analytic log|det J|.

One contract for every layer (the seed's ``f`` maps data -> latent)::

    z, log_det = layer.forward(x)    # z = f(x),        log_det = log|det df/dx|        [B]
    x, log_det = layer.inverse(z)    # x = f^{-1}(z),   log_det = log|det df^{-1}/dz|   [B]
                                     #                            = -forward log_det at that x

``log_det`` is summed over the event (every axis but the batch axis). This module holds the contract,
the elementwise and linear layers and the multi-scale architecture; coupling layers are in
:mod:`gen_jax.flows.coupling`, the masked autoregressive layer in :mod:`gen_jax.flows.autoregressive`. The log-determinants are
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
