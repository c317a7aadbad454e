"""GAN generators and discriminators: MLPs for 2D data, DCGAN for 28x28 / 32x32 images.

Generators map noise ``z ~ p_z = N(0, I)`` of shape ``[B, latent_dim]`` to examples ``G(z)``
(2D points, or images in ``[-1, 1]`` through ``tanh``). Discriminators map examples to one *logit*
per example, shape ``[B]``, with ``D(x) = sigmoid(logit)``.

Options shared by the discriminators:

* ``num_classes``: class conditioning by projection (Miyato & Koyama, 2018):
  ``logit(x, y) = psi(phi(x)) + <embed(y), phi(x)>``. Generators condition by concatenating a
  learned class embedding to ``z``.
* ``spectral_norm``: wrap every Dense/Conv of ``D`` in :class:`flax.linen.SpectralNorm`
  (Miyato et al., 2018). Its power-iteration vectors live in the ``'batch_stats'`` collection;
  call ``D`` with ``update_stats=True`` (and ``mutable=['batch_stats']``) in the discriminator's loss
  and ``update_stats=False`` elsewhere.

No discriminator uses batch statistics across examples, so the gradient penalties, which take
``grad_x`` of the summed logits, are exact per example.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.nn import GroupNorm, Upsample2x, downsample_layer


def _check_labels(labels: jax.Array | None, num_classes: int | None, batch: int, who: str) -> None:
    if num_classes is None:
        if labels is not None:
            raise ValueError(f"{who} is unconditional (num_classes=None) but got labels")
        return
    if labels is None:
        raise ValueError(f"{who} is conditional (num_classes={num_classes}) and needs labels [B]")
    if labels.shape != (batch,):
        raise ValueError(f"{who}: labels must have shape ({batch},), got {labels.shape}")


def _maybe_sn(layer: nn.Module, x: jax.Array, spectral_norm: bool, update_stats: bool) -> jax.Array:
    """Applies ``layer`` (created in the caller's compact scope), spectrally normalised if asked."""
    if spectral_norm:
        return nn.SpectralNorm(layer)(x, update_stats=update_stats)
    return layer(x)


class _ProjectionHead(nn.Module):
    """``logit = psi(h) + <embed(y), h>`` (projection) or ``psi(h)`` when unconditional."""

    num_classes: int | None = None
    spectral_norm: bool = False

    @nn.compact
    def __call__(self, h: jax.Array, labels: jax.Array | None, update_stats: bool) -> jax.Array:
        logit = _maybe_sn(nn.Dense(1), h, self.spectral_norm, update_stats)[:, 0]  # [B]
        if self.num_classes is not None:
            embed = nn.Embed(self.num_classes, h.shape[-1])(labels)  # [B, F]
            logit = logit + jnp.sum(embed * h, axis=-1)
        return logit


class MLPGenerator(nn.Module):
    """``G(z) = MLP(z [, embed(y)])`` for low-dimensional data.

    Attributes:
      out_dim: dimension of an example (2 for the toy data).
      hidden: widths of the hidden layers.
      num_classes: if set, condition on labels by concatenating a learned embedding to ``z``.
    """

    out_dim: int = 2
    hidden: Sequence[int] = (256, 256, 256)
    num_classes: int | None = None

    @nn.compact
    def __call__(self, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        if z.ndim != 2:
            raise ValueError(f"z must have shape [B, latent_dim], got {z.shape}")
        _check_labels(labels, self.num_classes, z.shape[0], "MLPGenerator")
        h = z
        if self.num_classes is not None:
            h = jnp.concatenate([h, nn.Embed(self.num_classes, z.shape[-1])(labels)], axis=-1)
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(h))
        return nn.Dense(self.out_dim)(h)  # [B, out_dim]


class MLPDiscriminator(nn.Module):
    """``logit(x) = w^T phi(x) + b`` with ``phi`` an MLP (LeakyReLU 0.2).

    Attributes:
      hidden: widths of the hidden layers.
      num_classes: if set, projection conditioning on labels.
      spectral_norm: spectrally normalise every Dense layer.
    """

    hidden: Sequence[int] = (256, 256, 256)
    num_classes: int | None = None
    spectral_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array | None = None, *, update_stats: bool = False) -> jax.Array:
        if x.ndim != 2:
            raise ValueError(f"MLPDiscriminator expects x of shape [B, D], got {x.shape}")
        _check_labels(labels, self.num_classes, x.shape[0], "MLPDiscriminator")
        h = x
        for width in self.hidden:
            h = nn.leaky_relu(_maybe_sn(nn.Dense(width), h, self.spectral_norm, update_stats), 0.2)
        return _ProjectionHead(self.num_classes, self.spectral_norm)(h, labels, update_stats)  # [B]


def _dcgan_layout(height: int) -> tuple[int, int]:
    """``(start_size, num_doublings)`` with ``start_size * 2**num_doublings == height``."""
    for start in (7, 4):
        n = height // start
        if height % start == 0 and n >= 2 and n & (n - 1) == 0:
            return start, int(math.log2(n))
    raise ValueError(f"DCGAN image size must be 7 * 2^k or 4 * 2^k (e.g. 28, 32, 64), got {height}")


def _check_image_shape(image_shape: Sequence[int], who: str) -> tuple[int, int, int]:
    if len(image_shape) != 3 or image_shape[0] != image_shape[1]:
        raise ValueError(f"{who}: image_shape must be (H, H, C), got {tuple(image_shape)}")
    return tuple(int(s) for s in image_shape)  # type: ignore[return-value]


class DCGANGenerator(nn.Module):
    """DCGAN generator (Radford et al., 2016): project ``z`` to a ``s x s`` feature map, then
    4x4 stride-2 transposed convolutions double the size until ``H``; ``tanh`` output in ``[-1, 1]``.

    28x28: ``7 -> 14 -> 28``; 32x32: ``4 -> 8 -> 16 -> 32``. Channels halve at every doubling,
    ending with ``base_features`` before the output layer.

    Attributes:
      image_shape: ``(H, W, C)`` of the generated images, ``H == W``.
      base_features: channels of the last hidden feature map.
      num_classes: if set, concatenate a learned class embedding to ``z``.
      norm: ``'group'`` (GroupNorm after every hidden layer) or ``'none'``. Batch normalisation is
        deliberately not offered: it would make ``G(z)`` depend on the rest of the batch.
      upsample: ``'transpose'`` (the paper's 4x4 stride-2 transposed convolution) or ``'subpixel'``
        (:class:`gen_jax.nn.Upsample2x`: represents the same layers exactly, several times faster on CPU).
    """

    image_shape: Sequence[int] = (28, 28, 1)
    base_features: int = 64
    num_classes: int | None = None
    norm: str = "group"
    upsample: str = "transpose"

    def _normalize(self, h: jax.Array) -> jax.Array:
        if self.norm == "none":
            return h
        if self.norm == "group":
            return GroupNorm(num_groups=math.gcd(32, h.shape[-1]))(h)
        raise ValueError(f"norm must be 'group' or 'none', got {self.norm!r}")

    @nn.compact
    def __call__(self, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        height, width, channels = _check_image_shape(self.image_shape, "DCGANGenerator")
        if z.ndim != 2:
            raise ValueError(f"z must have shape [B, latent_dim], got {z.shape}")
        _check_labels(labels, self.num_classes, z.shape[0], "DCGANGenerator")
        start, doublings = _dcgan_layout(height)
        h = z
        if self.num_classes is not None:
            h = jnp.concatenate([h, nn.Embed(self.num_classes, z.shape[-1])(labels)], axis=-1)
        features = self.base_features * 2 ** (doublings - 1)
        h = nn.Dense(start * start * features)(h)
        h = nn.relu(self._normalize(h.reshape(z.shape[0], start, start, features)))  # [B, s, s, F]
        for _ in range(doublings - 1):
            features //= 2
            h = nn.relu(self._normalize(Upsample2x(features, self.upsample, kernel=4)(h)))
        return jnp.tanh(Upsample2x(channels, self.upsample, kernel=4)(h))  # [B, H, W, C]


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: 4x4 stride-2 convolutions with LeakyReLU(0.2) halve the image down to
    ``s x s`` (7 for 28x28, 4 for 32x32), channels doubling from ``base_features``; then flatten and
    a linear (optionally projection-conditioned) head gives one logit per image.

    Attributes:
      image_shape: ``(H, W, C)`` of the input images, ``H == W``; ``C`` may be a multiple of the
        data's channels when samples are packed (PacGAN).
      base_features: channels of the first convolution.
      num_classes: if set, projection conditioning on labels.
      spectral_norm: spectrally normalise every convolution and the head.
      downsample: ``'strided'`` (the paper's 4x4 stride-2 convolution) or ``'space_to_depth'`` (the
        same function class; see `gen_jax.nn.downsample_layer`).
    """

    image_shape: Sequence[int] = (28, 28, 1)
    base_features: int = 64
    num_classes: int | None = None
    spectral_norm: bool = False
    downsample: str = "strided"

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array | None = None, *, update_stats: bool = False) -> jax.Array:
        shape = _check_image_shape(self.image_shape, "DCGANDiscriminator")
        if x.shape[1:] != shape:
            raise ValueError(f"DCGANDiscriminator expects images [B, {shape}], got {x.shape}")
        _check_labels(labels, self.num_classes, x.shape[0], "DCGANDiscriminator")
        _, doublings = _dcgan_layout(shape[0])
        h = x
        for i in range(doublings):
            conv, prepare = downsample_layer(self.base_features * 2**i, self.downsample, kernel=4)
            h = nn.leaky_relu(_maybe_sn(conv, prepare(h), self.spectral_norm, update_stats), 0.2)
        h = h.reshape(x.shape[0], -1)  # [B, s * s * F]
        return _ProjectionHead(self.num_classes, self.spectral_norm)(h, labels, update_stats)  # [B]


def init_gan(
    generator: nn.Module,
    discriminator: nn.Module,
    key: jax.Array,
    *,
    latent_dim: int,
    data_shape: Sequence[int],
    num_classes: int | None = None,
) -> tuple[dict, dict, dict | None]:
    """Initialises both players on a dummy batch.

    Args:
      generator, discriminator: the modules.
      key: PRNG key (split between the players).
      latent_dim: dimension of ``z``.
      data_shape: per-example shape of D's input (after any packing), e.g. ``(2,)`` or ``(28, 28, 1)``.
      num_classes: pass dummy labels when the models are class-conditional.

    Returns:
      ``(g_params, d_params, d_batch_stats)``; ``d_batch_stats`` is ``None`` unless D uses spectral
      normalisation.
    """
    labels = None if num_classes is None else jnp.zeros((2,), jnp.int32)

    @jax.jit  # one compiled program instead of one per initializer op
    def init(key):
        g_key, d_key = jax.random.split(key)
        g_params = generator.init(g_key, jnp.zeros((2, latent_dim)), labels)["params"]
        d_vars = discriminator.init(d_key, jnp.zeros((2,) + tuple(data_shape)), labels, update_stats=False)
        return g_params, d_vars["params"], d_vars.get("batch_stats")

    return init(key)
