"""VAE networks: Gaussian encoders q_phi(z|x) and decoders p_theta(x|z).

* An encoder maps x ``[B, *event]`` to the parameters of a diagonal Gaussian posterior
  q_phi(z|x) = N(mean, diag(exp(log_var))): ``(mean [B, k], log_var [B, k])``.
* A decoder maps z ``[B, k]`` to the raw parameters of the observation model p_theta(x|z), shape
  ``[B, *event[:-1], num_params * event[-1]]`` (see :mod:`gen_jax.vae.observations`).
* :class:`VAE` pairs them; ``VAE.encode`` / ``VAE.decode`` are used with ``model.apply(...,
  method=...)``. The prior is p(z) = N(0, I).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.nn import Conv, Upsample2x, downsample_layer
from gen_jax.precision import Policy

Activation = Callable[[jax.Array], jax.Array]


def _split_gaussian(h: jax.Array, latent_dim: int) -> tuple[jax.Array, jax.Array]:
    """Final linear layer -> (mean [B, k], log_var [B, k])."""
    out = nn.Dense(2 * latent_dim, name="posterior")(h)
    mean, log_var = jnp.split(out, 2, axis=-1)
    return mean, log_var


class MLPEncoder(nn.Module):
    """MLP encoder q_phi(z|x) = N(mean_phi(x), diag(exp(log_var_phi(x)))).

    Attributes:
      latent_dim: k, the dimension of z.
      hidden: widths of the hidden layers.
      activation: hidden nonlinearity.
    """

    latent_dim: int
    hidden: Sequence[int] = (512, 512)
    activation: Activation = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x.reshape(x.shape[0], -1)  # [B, D]
        for width in self.hidden:
            h = self.activation(nn.Dense(width)(h))
        return _split_gaussian(h, self.latent_dim)


class MLPDecoder(nn.Module):
    """MLP decoder: z -> raw parameters of p_theta(x|z).

    Attributes:
      event_shape: shape of one data example, e.g. ``(2,)`` or ``(28, 28, 1)``.
      num_params: parameters per data dimension required by the likelihood (``likelihood.num_params``).
      hidden: widths of the hidden layers.
      activation: hidden nonlinearity.
    """

    event_shape: Sequence[int]
    num_params: int = 1
    hidden: Sequence[int] = (512, 512)
    activation: Activation = nn.relu

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = z
        for width in self.hidden:
            h = self.activation(nn.Dense(width)(h))
        out_shape = (*self.event_shape[:-1], self.num_params * self.event_shape[-1])
        out = nn.Dense(math.prod(out_shape), name="likelihood_params")(h)
        return out.reshape(z.shape[0], *out_shape)


class ConvEncoder(nn.Module):
    """Convolutional encoder for images ``[B, H, W, C]``: strided 3x3 convs, then a dense layer.

    Attributes:
      latent_dim: k, the dimension of z.
      features: channels of each stride-2 conv (each halves H and W).
      dense: width of the dense layer before the posterior head (0: none).
      activation: nonlinearity.
      downsample: ``'strided'`` (3x3 stride-2 convolutions) or ``'space_to_depth'`` (the same function
        class; see `gen_jax.nn.downsample_layer`).
    """

    latent_dim: int
    features: Sequence[int] = (32, 64)
    dense: int = 256
    activation: Activation = nn.relu
    downsample: str = "strided"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if x.ndim != 4:
            raise ValueError(f"ConvEncoder expects images [B, H, W, C], got shape {x.shape}.")
        h = x
        for f in self.features:
            conv, prepare = downsample_layer(f, self.downsample, kernel=3)
            h = self.activation(conv(prepare(h)))
        h = h.reshape(h.shape[0], -1)
        if self.dense:
            h = self.activation(nn.Dense(self.dense)(h))
        return _split_gaussian(h, self.latent_dim)


class ConvDecoder(nn.Module):
    """Convolutional decoder: z -> dense -> [H/2^n, W/2^n, F] -> n stride-2 transposed convs.

    Attributes:
      event_shape: ``(H, W, C)``; H and W must be divisible by 2^len(features).
      num_params: parameters per sub-pixel required by the likelihood.
      features: channels of the transposed convs, from coarse to fine (each doubles H and W).
      dense: width of the dense layer after z (0: none).
      activation: nonlinearity.
      upsample: ``'transpose'`` (3x3 stride-2 transposed convolutions) or ``'subpixel'``
        (:class:`gen_jax.nn.Upsample2x`: represents the same layers exactly, several times faster on CPU).
    """

    event_shape: Sequence[int]
    num_params: int = 1
    features: Sequence[int] = (64, 32)
    dense: int = 256
    activation: Activation = nn.relu
    upsample: str = "transpose"

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        height, width, channels = self.event_shape
        factor = 2 ** len(self.features)
        if height % factor or width % factor:
            raise ValueError(
                f"ConvDecoder: event_shape {tuple(self.event_shape)} must have H and W divisible by "
                f"2^len(features) = {factor}.")
        h = z
        if self.dense:
            h = self.activation(nn.Dense(self.dense)(h))
        h0, w0 = height // factor, width // factor
        h = self.activation(nn.Dense(h0 * w0 * self.features[0])(h))
        h = h.reshape(z.shape[0], h0, w0, self.features[0])  # [B, H/f, W/f, F0]
        for f in self.features:
            h = self.activation(Upsample2x(f, self.upsample, kernel=3)(h))
        return Conv(self.num_params * channels, (3, 3), padding="SAME",
                       name="likelihood_params")(h)  # [B, H, W, P*C]


class VAE(nn.Module):
    """Encoder q_phi(z|x) plus decoder p_theta(x|z) with prior p(z) = N(0, I).

    ``model.init(key, x)`` initialises both networks (``__call__`` encodes x and decodes the
    posterior mean). Use ``model.apply(variables, x, method=VAE.encode)`` and
    ``model.apply(variables, z, method=VAE.decode)`` in objectives and samplers.

    Attributes:
      encoder: module x -> (mean [B, k], log_var [B, k]).
      decoder: module z [B, k] -> likelihood parameters.
      latent_dim: k; must equal the encoder's output size.
      precision: the networks' compute dtype (:class:`gen_jax.precision.Policy`; their outputs, and so the
        bounds, are float32).
    """

    encoder: nn.Module
    decoder: nn.Module
    latent_dim: int
    precision: Policy = Policy()

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x -> (mean, log_var) of q_phi(z|x), each ``[B, k]``."""
        mean, log_var = self.precision.call(self, lambda m, x: m.encoder(x), x)
        if mean.shape[-1] != self.latent_dim:
            raise ValueError(
                f"encoder returned latent size {mean.shape[-1]}, expected latent_dim={self.latent_dim}.")
        return mean, log_var

    def decode(self, z: jax.Array) -> jax.Array:
        """z ``[B, k]`` -> raw parameters of p_theta(x|z)."""
        if z.ndim != 2 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape [B, {self.latent_dim}], got {z.shape}.")
        return self.precision.call(self, lambda m, z: m.decoder(z), z)

    def __call__(self, x: jax.Array) -> jax.Array:
        mean, _ = self.encode(x)
        return self.decode(mean)


def mlp_vae(event_shape: Sequence[int], *, latent_dim: int, num_params: int,
            hidden: Sequence[int] = (512, 512), activation: Activation = nn.relu,
            precision: Policy = Policy()) -> VAE:
    """A VAE with MLP encoder and decoder (decoder hidden widths mirror the encoder's)."""
    return VAE(
        encoder=MLPEncoder(latent_dim=latent_dim, hidden=tuple(hidden), activation=activation),
        decoder=MLPDecoder(event_shape=tuple(event_shape), num_params=num_params,
                           hidden=tuple(reversed(hidden)), activation=activation),
        latent_dim=latent_dim, precision=precision)


def conv_vae(event_shape: Sequence[int], *, latent_dim: int, num_params: int,
             features: Sequence[int] = (32, 64), dense: int = 256,
             activation: Activation = nn.relu, upsample: str = "transpose",
             downsample: str = "strided", precision: Policy = Policy()) -> VAE:
    """A VAE with conv encoder and mirrored upsampling decoder for images ``(H, W, C)`` (``upsample``:
    see :class:`ConvDecoder`; ``downsample``: see :class:`ConvEncoder`)."""
    if len(event_shape) != 3:
        raise ValueError(f"conv_vae needs an image event_shape (H, W, C), got {tuple(event_shape)}.")
    return VAE(
        encoder=ConvEncoder(latent_dim=latent_dim, features=tuple(features), dense=dense,
                            activation=activation, downsample=downsample),
        decoder=ConvDecoder(event_shape=tuple(event_shape), num_params=num_params,
                            features=tuple(reversed(features)), dense=dense, activation=activation,
                            upsample=upsample),
        latent_dim=latent_dim, precision=precision)
