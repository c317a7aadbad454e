"""Flow models: a bijector ``f`` (data -> latent) and a standard normal base density ``p_z``.

The seed's objective, literally::

    log p_model(x) = log p_z(f(x)) + log|det df(x)/dx|          (``FlowModel.log_prob``)

and sampling inverts the flow: ``x = f^{-1}(z)``, ``z ~ N(0, T^2 I)`` (``FlowModel.sample``; the
temperature T < 1 concentrates samples, as in Glow).

Models: :class:`RealNVP`, :class:`NSF`, :class:`MAF` for vectors (2D toy / tabular),
:class:`MultiScaleRealNVP` and :class:`Glow` for images. Image models include their
pre-processing bijector (logit or affine) as the first layer, so their data space is the
dequantized image scaled to [0, 1) (see ``gen_jax.flows.losses``).

Usage::

    model = Glow(image_shape=(28, 28, 1), num_levels=2, num_steps=8, hidden=(128, 128))
    variables = model.init(key, x_first_batch)      # ActNorm data-dependent init on this batch
    log_p = model.apply(variables, x, method=model.log_prob)          # [B]
    samples = model.apply(variables, key, 16, 0.7, method=model.sample)
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from gen_jax.flows.autoregressive import (
    MaskedAutoregressive,
)
from gen_jax.flows.bijectors import (
    ActNorm,
    Affine,
    Bijector,
    Chain,
    Invertible1x1Conv,
    Logit,
    MultiScaleFlow,
    Permute,
    Squeeze,
)
from gen_jax.flows.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    SplineCoupling,
)
from gen_jax.ops import standard_normal_log_prob
from gen_jax.precision import Policy

Array = jax.Array


class FlowModel(nn.Module):
    """Base of the flow models: ``log_prob`` and ``sample`` around ``self.bijector``.

    Subclasses build ``self.bijector`` in ``setup`` and define ``event_shape``. Calling the model is
    ``forward`` (so ``model.init(key, x)`` runs the data-dependent initialisation on ``x``).
    ``precision`` is the compute dtype of the coupling conditioners (:class:`gen_jax.precision.Policy`);
    the transforms themselves and their log-dets stay float32 (MAF's MADE stays float32 throughout).
    ``remat`` rematerialises each coupling conditioner in the backward pass with that named policy
    (:data:`gen_jax.nn.REMAT_POLICIES`; None: keep every activation).
    """

    precision: Policy = Policy()
    remat: str | None = None

    @property
    def network_options(self) -> dict:
        """What every coupling layer's conditioner is built with."""
        return {"precision": self.precision, "remat": self.remat}

    @property
    def event_shape(self) -> tuple[int, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check(self, x: Array, name: str) -> None:
        if x.ndim != len(self.event_shape) + 1 or tuple(x.shape[1:]) != tuple(self.event_shape):
            raise ValueError(
                f"{type(self).__name__} expects {name} of shape [B, {', '.join(map(str, self.event_shape))}], "
                f"got {tuple(x.shape)}"
            )

    def __call__(self, x: Array) -> tuple[Array, Array]:
        return self.forward(x)

    def forward(self, x: Array) -> tuple[Array, Array]:
        """``z = f(x)`` and ``log|det df/dx|`` ``[B]``."""
        self._check(x, "x")
        return self.bijector.forward(x)

    def inverse(self, z: Array) -> tuple[Array, Array]:
        """``x = f^{-1}(z)`` and ``log|det df^{-1}/dz|`` ``[B]``."""
        self._check(z, "z")
        return self.bijector.inverse(z)

    def log_prob(self, x: Array) -> Array:
        """``log p_model(x) = log p_z(f(x)) + log|det df/dx|`` per example ``[B]`` (nats)."""
        z, log_det = self.forward(x)
        return standard_normal_log_prob(z) + log_det

    def sample(self, key: jax.Array, n: int, temperature: float = 1.0) -> Array:
        """``x = f^{-1}(T * eps)``, ``eps ~ N(0, I)``: ``n`` samples ``[n, *event_shape]``."""
        eps = jax.random.normal(key, (n, *self.event_shape))
        x, _ = self.inverse(temperature * eps)
        return x


class RealNVP(FlowModel):
    """RealNVP for vectors: affine couplings with alternating masks and MLP conditioners.

    Attributes:
      dim: data dimension D.
      num_layers: number of coupling layers (parity alternates).
      hidden: MLP widths of each conditioner.
      max_log_scale: bound on the log-scales.
      actnorm: put an ActNorm (data-dependent init) before each coupling.
    """

    dim: int = 2
    num_layers: int = 8
    hidden: Sequence[int] = (64, 64)
    max_log_scale: float = 3.0
    actnorm: bool = False

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def setup(self):
        layers = []
        for i in range(self.num_layers):
            if self.actnorm:
                layers.append(ActNorm())
            layers.append(
                AffineCoupling(mask="alternate", parity=i % 2, hidden=tuple(self.hidden),
                               max_log_scale=self.max_log_scale, **self.network_options)
            )
        self.bijector = Chain(tuple(layers))


class NSF(FlowModel):
    """Neural Spline Flow (coupling version) for vectors: rational-quadratic spline couplings.

    Attributes:
      dim: data dimension D.
      num_layers: spline coupling layers (parity alternates).
      hidden: MLP widths of each conditioner.
      num_bins: K, bins per spline.
      bound: B, splines act on [-B, B] with identity tails.
      lu_linear: an LU-parameterised invertible linear layer between couplings (Durkan et al.).
    """

    dim: int = 2
    num_layers: int = 4
    hidden: Sequence[int] = (64, 64)
    num_bins: int = 8
    bound: float = 5.0
    lu_linear: bool = False

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def setup(self):
        layers = []
        for i in range(self.num_layers):
            if self.lu_linear and i > 0:
                layers.append(Invertible1x1Conv(lu=True, seed=i))
            layers.append(
                SplineCoupling(mask="alternate", parity=i % 2, hidden=tuple(self.hidden),
                               num_bins=self.num_bins, bound=self.bound, **self.network_options)
            )
        self.bijector = Chain(tuple(layers))


class MAF(FlowModel):
    """Masked autoregressive flow: MADE layers with order reversal between them.

    Attributes:
      dim: data dimension D.
      num_layers: MAF layers.
      hidden: MADE hidden widths.
      max_log_scale: bound on the log-scales.
      actnorm: an ActNorm after each MAF layer (in place of MAF's batch norm).
    """

    dim: int = 2
    num_layers: int = 5
    hidden: Sequence[int] = (64, 64)
    max_log_scale: float = 3.0
    actnorm: bool = False

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def setup(self):
        layers = []
        for i in range(self.num_layers):
            if i > 0:
                layers.append(Permute("reverse"))
            # the MADE stays float32 whatever the policy: the inverse evaluates it D more times on other
            # inputs, and bfloat16 rounding there broke invertibility (2e-3 in x)
            layers.append(MaskedAutoregressive(hidden=tuple(self.hidden), max_log_scale=self.max_log_scale))
            if self.actnorm:
                layers.append(ActNorm())
        self.bijector = Chain(tuple(layers))


def _preprocess(kind: str, alpha: float) -> Bijector:
    if kind == "logit":
        return Logit(alpha=alpha)
    if kind == "affine":
        return Affine(scale=1.0, shift=-0.5)
    raise ValueError(f"preprocess must be 'logit' or 'affine', got {kind!r}")


def _check_image_shape(image_shape: Sequence[int], num_squeezes: int, why: str) -> None:
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {image_shape!r}")
    h, w, _ = image_shape
    div = 2**num_squeezes
    if h % div or w % div:
        raise ValueError(f"image_shape {tuple(image_shape)} must have H and W divisible by {div} "
                         f"({num_squeezes} squeezes: {why}); use fewer levels or pad the images")


class MultiScaleRealNVP(FlowModel):
    """Multi-scale RealNVP for images (Dinh et al. 2017).

    Data in [0, 1) -> logit pre-processing -> for each scale but the last: 3 checkerboard affine
    couplings, squeeze, 3 channel affine couplings, factor out half the channels; last scale: 4
    checkerboard couplings. Conditioners are ResNets. ActNorm (data-dependent init) precedes each
    coupling in place of the paper's batch normalisation.

    Attributes:
      image_shape: (H, W, C).
      num_scales: number of scales (num_scales - 1 squeezes and factor-outs).
      hidden: conditioner channels (first 3x3 conv, then 1x1 convs).
      num_res_blocks: residual blocks per conditioner.
      max_log_scale: bound on the log-scales.
      actnorm: ActNorm before each coupling.
      preprocess: ``'logit'`` (x -> logit(alpha + (1 - 2 alpha) x)) or ``'affine'`` (x - 0.5).
      alpha: logit pre-processing constant (0.05 in Dinh et al.; Papamakarios et al. use 1e-6 on MNIST).
    """

    image_shape: Sequence[int] = (28, 28, 1)
    num_scales: int = 2
    hidden: Sequence[int] = (64,)
    num_res_blocks: int = 2
    max_log_scale: float = 3.0
    actnorm: bool = True
    preprocess: str = "logit"
    alpha: float = 1e-6

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.image_shape)

    def _coupling(self, mask: str, parity: int) -> list[Bijector]:
        layers = [ActNorm()] if self.actnorm else []
        layers.append(
            AffineCoupling(mask=mask, parity=parity, hidden=tuple(self.hidden),
                           num_res_blocks=self.num_res_blocks, max_log_scale=self.max_log_scale,
                           **self.network_options)
        )
        return layers

    def setup(self):
        if self.num_scales < 1:
            raise ValueError(f"num_scales must be >= 1, got {self.num_scales}")
        _check_image_shape(self.image_shape, self.num_scales - 1, f"num_scales={self.num_scales}")
        levels = []
        for _ in range(self.num_scales - 1):
            layers = []
            for i in range(3):
                layers += self._coupling("checkerboard", i % 2)
            layers.append(Squeeze())
            for i in range(3):
                layers += self._coupling("channel", i % 2)
            levels.append(Chain(tuple(layers)))
        final = []
        for i in range(4):
            final += self._coupling("checkerboard", i % 2)
        levels.append(Chain(tuple(final)))
        self.bijector = Chain((_preprocess(self.preprocess, self.alpha), MultiScaleFlow(tuple(levels))))


class Glow(FlowModel):
    """Glow (Kingma & Dhariwal 2018): L levels of [squeeze, K x (ActNorm, 1x1 conv, coupling)].

    Data in [0, 1) -> pre-processing (default ``x - 0.5`` as in Glow) -> per level: squeeze, K flow
    steps ``ActNorm -> Invertible1x1Conv (LU) -> AffineCoupling (channel halves)``, then (all but
    the last level) a learned split prior and a factor-out of half the channels. The learned prior
    ``N(z_2; mu(z_1), sigma(z_1))`` is written as an affine coupling on the factored half, so the
    base density stays N(0, I) and ``log_prob`` is the seed's formula.

    Attributes:
      image_shape: (H, W, C); H and W divisible by 2^L.
      num_levels: L.
      num_steps: K, flow steps per level.
      hidden: coupling ConvNet channels (Glow: (512, 512)).
      lu: LU-decomposed 1x1 convolutions (else plain).
      additive: additive (volume-preserving) instead of affine couplings.
      learn_split_prior: learned conditional prior at each factor-out.
      max_log_scale: bound on the coupling log-scales.
      preprocess: ``'affine'`` (x - 0.5) or ``'logit'``.
      alpha: logit pre-processing constant.
    """

    image_shape: Sequence[int] = (28, 28, 1)
    num_levels: int = 3
    num_steps: int = 32
    hidden: Sequence[int] = (512, 512)
    lu: bool = True
    additive: bool = False
    learn_split_prior: bool = True
    max_log_scale: float = 3.0
    preprocess: str = "affine"
    alpha: float = 1e-6

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.image_shape)

    def _coupling(self) -> Bijector:
        if self.additive:
            return AdditiveCoupling(mask="channel", parity=0, hidden=tuple(self.hidden), **self.network_options)
        return AffineCoupling(mask="channel", parity=0, hidden=tuple(self.hidden),
                              max_log_scale=self.max_log_scale, **self.network_options)

    def setup(self):
        if self.num_levels < 1 or self.num_steps < 1:
            raise ValueError(f"need num_levels, num_steps >= 1, got {self.num_levels}, {self.num_steps}")
        _check_image_shape(self.image_shape, self.num_levels, f"num_levels={self.num_levels}")
        levels = []
        for lvl in range(self.num_levels):
            layers: list[Bijector] = [Squeeze()]
            for k in range(self.num_steps):
                layers += [ActNorm(), Invertible1x1Conv(lu=self.lu, seed=lvl * self.num_steps + k),
                           self._coupling()]
            if self.learn_split_prior and lvl < self.num_levels - 1:
                layers.append(AffineCoupling(mask="channel", parity=0, hidden=tuple(self.hidden),
                                             max_log_scale=self.max_log_scale, **self.network_options))
            levels.append(Chain(tuple(layers)))
        self.bijector = Chain((_preprocess(self.preprocess, self.alpha), MultiScaleFlow(tuple(levels))))
