"""Layers shared by several families.

The one backend-specific choice in gen_jax lives here: on the CPU, stride-1 convolutions with a narrow
side and 1x1 convolutions run as matmuls (:func:`conv_general_dilated`), which XLA's CPU convolutions
are slow at; other backends get XLA's convolution, as Flax's layers do. :func:`set_cpu_kernels` turns
the choice on or off everywhere (default: on when JAX's default backend is the CPU); the measurements
behind it are in ``experiments/BENCHMARKS.md``.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

__all__ = ["Conv", "GroupNorm", "Upsample2x", "Downsample2x", "conv_general_dilated", "depth_to_space",
           "space_to_depth", "downsample_layer", "TAP_LIMITS", "UPSAMPLE_KINDS", "DOWNSAMPLE_KINDS",
           "cpu_kernels", "set_cpu_kernels", "remat", "REMAT_POLICIES"]

UPSAMPLE_KINDS = ("transpose", "subpixel")
DOWNSAMPLE_KINDS = ("strided", "space_to_depth")

#: Largest ``kh * kw * C_in`` (input taps) and ``kh * kw * C_out`` (output taps) at which
#: :func:`conv_general_dilated` computes a stride-1 convolution as one matmul over shifted copies
#: instead of XLA's convolution: up to these sizes the matmul won on the CPUs measured, beyond them
#: XLA's convolution did (the single-layer measurements are in experiments/BENCHMARKS.md). 1x1
#: convolutions of any width are always a matmul (no shifted copies; see :func:`_tap_form`).
TAP_LIMITS = {"input": 72, "output": 72}

_CPU_KERNELS: bool | None = None  # None: on when JAX's default backend is the CPU


def set_cpu_kernels(enabled: bool | None) -> None:
    """The policy of gen_jax's CPU kernels (module docstring): ``True`` always, ``False`` never (XLA's
    convolutions everywhere), ``None`` (the default) when JAX's default backend is the CPU. Read when a
    model is traced: set it before building a train step."""
    global _CPU_KERNELS
    if enabled not in (True, False, None):
        raise ValueError(f"set_cpu_kernels takes True, False or None, got {enabled!r}")
    _CPU_KERNELS = enabled


def cpu_kernels() -> bool:
    """Whether gen_jax's CPU kernels are in use now (see :func:`set_cpu_kernels`)."""
    return jax.default_backend() == "cpu" if _CPU_KERNELS is None else _CPU_KERNELS


def _tap_form(x_shape, w_shape, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
              feature_group_count, batch_group_count, extra) -> str | None:
    """Which matmul form :func:`conv_general_dilated` uses for these arguments (None: XLA's conv)."""
    if len(x_shape) != 4 or not cpu_kernels() or any(v is not None for v in extra.values()):
        return None
    if feature_group_count != 1 or batch_group_count != 1 or any(s != 1 for s in window_strides):
        return None
    if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
        return None
    nhwc = jax.lax.conv_dimension_numbers(x_shape, w_shape, ("NHWC", "HWIO", "NHWC"))
    if jax.lax.conv_dimension_numbers(x_shape, w_shape, dimension_numbers) != nhwc:
        return None
    kh, kw, c_in, c_out = w_shape
    if kh * kw == 1:  # a 1x1 convolution is a matmul whatever its width: no shifted copies at all
        return "input"
    forms = [(kh * kw * c_in, "input"), (kh * kw * c_out, "output")]
    fits = [(size, form) for size, form in forms if size <= TAP_LIMITS[form]]
    return min(fits)[1] if fits else None


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None, **extra) -> jax.Array:
    """``jax.lax.conv_general_dilated`` (same arguments and result), with a faster route on CPU for
    stride-1 NHWC/HWIO convolutions that have few input or few output channels.

    XLA CPU runs convolutions with a narrow side (e.g. a flow coupling's 2-channel input, a decoder's
    1-channel output) far below its matmul rate (experiments/BENCHMARKS.md). With ``T = kh * kw``
    taps such a convolution is exactly one matmul over shifted copies:

    * input taps (``T * C_in`` small): ``y = [x_{i,j}]_{i,j} @ W.reshape(T * C_in, C_out)``, the
      ``T`` shifted windows of the padded input stacked on the channels (im2col);
    * output taps (``T * C_out`` small): ``z = x @ W'`` with ``W'`` the ``[C_in, T * C_out]``
      kernel, then ``y = sum_{i,j} z_pad[i + ., j + ., (i, j)]``, the taps' outputs shifted and added.

    A 1x1 convolution is the input form with one tap: a plain matmul at every pixel, whose weight
    gradient XLA computes as a dot instead of a convolution that first transposes the activations.

    Their gradients are matmuls and shifts (pads) too. Which form (or XLA's convolution) runs is
    decided from the shapes by :data:`TAP_LIMITS` when :func:`cpu_kernels` is on; everything else
    (strides, dilation, groups, other layouts, other backends) goes to ``lax.conv_general_dilated``
    unchanged.
    ``tests/test_nn.py`` checks values and gradients against it.
    """
    form = _tap_form(lhs.shape, rhs.shape, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
                     feature_group_count, batch_group_count, extra)
    if form is not None and isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    if form is None or any(p < 0 for pair in padding for p in pair):  # negative padding crops: XLA's
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                            dimension_numbers, feature_group_count, batch_group_count,
                                            precision=precision, **extra)
    kh, kw, c_in, c_out = rhs.shape
    n, height, width, _ = lhs.shape
    (top, bottom), (left, right) = padding
    out_h, out_w = height + top + bottom - kh + 1, width + left + right - kw + 1
    taps = [(i, j) for i in range(kh) for j in range(kw)]

    def shifted(a: jax.Array, i: int, j: int) -> jax.Array:
        # tap (i, j) of output (h, w) reads a[h + i - top, w + j - left] (zero outside): one lax.pad,
        # negative where it crops. Its transpose is the opposite shift, so the gradients are shifts
        # too (slicing a padded array instead transposes into one full-size pad per tap).
        zero = jnp.zeros((), a.dtype)
        return jax.lax.pad(a, zero, ((0, 0, 0), (top - i, out_h - height - top + i, 0),
                                     (left - j, out_w - width - left + j, 0), (0, 0, 0)))

    if form == "input":
        cols = jnp.concatenate([shifted(lhs, i, j) for i, j in taps], axis=-1)
        y = jnp.matmul(cols.reshape(-1, kh * kw * c_in), rhs.reshape(kh * kw * c_in, c_out), precision=precision)
        return y.reshape(n, out_h, out_w, c_out)
    z = jnp.matmul(lhs.reshape(-1, c_in), rhs.transpose(2, 0, 1, 3).reshape(c_in, kh * kw * c_out),
                   precision=precision)
    parts = jnp.split(z.reshape(n, height, width, kh * kw * c_out), kh * kw, axis=-1)
    return sum(shifted(part, i, j) for part, (i, j) in zip(parts, taps))


class Conv(nn.Conv):
    """``flax.linen.Conv`` computed by :func:`conv_general_dilated`: same parameters, names and
    results, faster on CPU where a side has few channels. gen_jax's models use it for every
    convolution."""

    conv_general_dilated: Callable | None = conv_general_dilated


class GroupNorm(nn.Module):
    """Group normalisation (Wu & He, 2018) over ``[B, ..., C]``, with the parameters, names and results
    of ``flax.linen.GroupNorm`` (same ``scale`` and ``bias``; equal up to float rounding), computed
    faster on CPU.

    For each example ``b`` and group ``g`` of ``C / G`` channels, with ``mu`` and ``sigma^2`` the mean
    and variance of ``x[b, ..., c]`` over the positions and the group's channels::

        y[b, ..., c] = (x[b, ..., c] - mu[b, g]) / sqrt(sigma^2[b, g] + epsilon) * scale[c] + bias[c]

    Computed as flax does (``sigma^2 = E[x^2] - E[x]^2``, clipped at 0, in float32; the result in x's
    dtype), but reduced in two stages: ``sum x`` and ``sum x^2`` over the positions per channel (the
    channels stay contiguous, so the reduction vectorises), then over each group's channels; the
    normalisation is one ``x * a[b, c] + d[b, c]``. XLA CPU reduces flax's ``[B, H, W, G, C/G]`` layout
    over a strided minor axis, which this avoids (measured in experiments/BENCHMARKS.md).
    Differentiated by the simplified tangent rule of the normalisation (:func:`_group_norm_jvp`), not through
    the statistics' formula: the U-Net's step 1.13x faster. ``tests/test_nn.py`` compares values, gradients,
    jvps and second derivatives with flax's.

    With an ``activation`` (e.g. swish, as the U-Net's blocks use it), ``activation(GroupNorm(x))`` is one
    rematerialised unit (``jax.checkpoint``) that keeps only ``x`` and the ``[B, C]`` statistics for the
    backward pass, which recomputes the normalisation and the activation from them: the plain composition
    keeps three more activation-sized arrays (the normalised ``x`` and the activation's two residuals), and
    writing and reading them back cost more than recomputing them (the U-Net's step: 9 % fewer bytes
    accessed, 17 % less temporary memory, 1.03x faster; experiments/BENCHMARKS.md). The values and gradients
    are the same.

    Attributes:
      num_groups: ``G``; must divide the channels.
      epsilon: added to the variance.
      activation: an element-wise function applied after the normalisation, fused as above (None: none).
    """

    num_groups: int = 32
    epsilon: float = 1e-6
    activation: Callable[[jax.Array], jax.Array] | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if x.ndim < 2 or c % self.num_groups:
            raise ValueError(f"GroupNorm: input [B, ..., C] with C divisible by num_groups={self.num_groups}, "
                             f"got shape {x.shape}")
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        if self.activation is None:
            return _group_norm(x, scale, bias, self.num_groups, self.epsilon)
        return _group_norm_act(x, scale, bias, self.num_groups, self.epsilon, self.activation)


@functools.partial(jax.checkpoint, static_argnums=(3, 4, 5),
                   policy=jax.checkpoint_policies.save_only_these_names("group_norm_stats"))
def _group_norm_act(x, scale, bias, num_groups, epsilon, activation):
    """``activation(GroupNorm(x))``, saving only its inputs and the statistics for the backward pass."""
    return activation(_group_norm(x, scale, bias, num_groups, epsilon))


def _group_sum(v: jax.Array, num_groups: int) -> jax.Array:
    """``[B, ..., C] -> [B, C]``: the sum over each example's positions and its channel's group, per channel
    (reduced per channel first, so the channels stay contiguous, then over each group's channels)."""
    batch, c = v.shape[0], v.shape[-1]
    per_channel = jnp.sum(v, axis=tuple(range(1, v.ndim - 1))).reshape(batch, num_groups, c // num_groups)
    return jnp.broadcast_to(jnp.sum(per_channel, axis=-1, keepdims=True), per_channel.shape).reshape(batch, c)


def _per_channel(v: jax.Array, ndim: int) -> jax.Array:
    """``[B, C] -> [B, 1, ..., 1, C]`` to broadcast against ``ndim``-d activations."""
    return v.reshape((v.shape[0],) + (1,) * (ndim - 2) + (v.shape[-1],))


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, epsilon: float) -> jax.Array:
    """:class:`GroupNorm`'s values (statistics in float32, output in x's dtype). Differentiated by the
    simplified tangent rule of :func:`_group_norm_jvp` (reverse mode by its transpose), not through the
    statistics' formula: fewer ops and copies in the backward pass (experiments/BENCHMARKS.md)."""
    return _group_norm_parts(x, scale, bias, num_groups, epsilon)[0]


def _group_norm_parts(x, scale, bias, num_groups, epsilon):
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    count = (xf.size // xf.shape[0]) // num_groups  # elements per (example, group)
    mean = _group_sum(xf, num_groups) / count                                          # [B, C]
    var = jnp.maximum(_group_sum(xf * xf, num_groups) / count - mean * mean, 0.0)
    rstd = jax.lax.rsqrt(var + epsilon)
    mean, rstd = (checkpoint_name(v, "group_norm_stats") for v in (mean, rstd))
    a = rstd * scale[None]
    y = xf * _per_channel(a, x.ndim) + _per_channel(bias[None] - mean * a, x.ndim)
    return y.astype(x.dtype), xf, mean, rstd, count


@_group_norm.defjvp
def _group_norm_jvp(num_groups, epsilon, primals, tangents):
    """``dy = scale * dxhat + xhat * dscale + dbias`` with ``xhat = (x - mean) * rstd`` and
    ``dxhat = rstd * (dx - mean_n(dx) - xhat * mean_n(dx * xhat))`` (means over each group's n elements),
    written as ``dy = dx * A + x * B + C`` with per-(example, channel) ``A, B, C``: the only full-size
    operands are x and dx (so reverse mode, its transpose, keeps x and no normalised copy of it)."""
    x, scale, bias = primals
    dx, dscale, dbias = tangents
    y, xf, mean, rstd, count = _group_norm_parts(x, scale, bias, num_groups, epsilon)
    dxf = dx.astype(xf.dtype)
    dmean = _group_sum(dxf, num_groups) / count                                        # [B, C]
    dvar = (_group_sum(dxf * xf, num_groups) / count - mean * dmean) * rstd            # mean_n(dx * xhat)
    a = rstd * scale[None]
    b = rstd * (dscale[None] - a * dvar)
    c = dbias[None] - a * dmean - mean * b
    dy = dxf * _per_channel(a, x.ndim) + xf * _per_channel(b, x.ndim) + _per_channel(c, x.ndim)
    return y, dy.astype(y.dtype)

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
        convolution. On XLA CPU it was not faster (experiments/BENCHMARKS.md), so the configs keep
        'strided'; it is there to compare on other devices.
      kernel: the strided convolution's kernel size (3 or 4).
    """
    if kind == "strided":
        return Conv(features, (kernel, kernel), strides=(2, 2), padding="SAME"), lambda h: h
    if kind == "space_to_depth":
        def prepare(h: jax.Array) -> jax.Array:
            return space_to_depth(jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0))), 2)
        return Conv(features, (2, 2), padding="VALID"), prepare
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
            return depth_to_space(Conv(4 * self.features, (3, 3), padding="SAME")(h), 2)
        raise ValueError(f"upsample must be one of {UPSAMPLE_KINDS}, got {self.kind!r}")


#: Named rematerialisation policies (config ``model.remat``) -> what the backward pass keeps of a block's
#: forward pass: ``'full'`` keeps only the block's inputs and recomputes everything inside
#: (``jax.checkpoint_policies.nothing_saveable``); ``'dots'`` keeps the outputs of its matmuls and
#: convolutions and recomputes the cheap elementwise work between them (normalisations, activations,
#: ``dots_saveable``); None keeps everything (no rematerialisation).
REMAT_POLICIES = {"full": jax.checkpoint_policies.nothing_saveable, "dots": jax.checkpoint_policies.dots_saveable}


@functools.lru_cache(maxsize=None)
def remat(cls: type[nn.Module], policy: str | None, static_argnums: tuple[int, ...] = ()) -> type[nn.Module]:
    """``cls`` rematerialised with the named policy (:data:`REMAT_POLICIES`; None: ``cls`` itself), under
    ``cls``'s own name so its parameter tree is the same with and without (checkpoints carry over).
    ``static_argnums`` count ``self`` as 0 (e.g. a ``train`` flag)."""
    if policy is None:
        return cls
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat policy must be None or one of {sorted(REMAT_POLICIES)}, got {policy!r}")
    wrapped = nn.remat(cls, policy=REMAT_POLICIES[policy], static_argnums=static_argnums)
    wrapped.__name__, wrapped.__qualname__ = cls.__name__, cls.__qualname__
    return wrapped
