"""PyTorch twins of the flow configs' train steps: ``realnvp_toy`` and ``glow_mnist``.

What each twin mirrors, layer for layer and in gen_jax's order (:mod:`gen_jax.flows`):

* ``realnvp_toy`` (:class:`gen_jax.flows.RealNVP` on ``[B, D]`` points): ``num_layers`` affine
  couplings with alternating masks (even / odd features, the parity alternating), each conditioned by
  an MLP of ``hidden`` widths with tanh-approximated GELU (flax's ``nn.gelu``) and a zero-initialised
  output layer; log-scales bounded by ``max_log_scale * tanh(s / max_log_scale)``; an ActNorm before
  each coupling when ``model.actnorm``. Loss: the mean NLL in nats under a standard normal base.
* ``glow_mnist`` (:class:`gen_jax.flows.Glow` on ``[B, H, W, C]`` uint8 images): uniform
  dequantisation ``(x + u) / 2^bits`` drawn inside the step, the logit (or ``x - 0.5``) pre-processing
  with its log-det, then per level a squeeze (gen_jax's channel order) and K steps of ActNorm ->
  invertible 1x1 convolution (LU: ``W = P L (U + diag(sign * exp(log_s)))`` built from the parameters
  every step, P and sign fixed, the same random-rotation start per step seed; or a free kernel with
  ``slogdet``) -> channel-halves coupling (affine with bounded log-scales, or additive) whose ConvNet
  is conv3x3 -> ReLU -> conv1x1 -> ReLU -> conv3x3 (zero-initialised); all levels but the last end
  with the learned split prior (an affine coupling of the factored half on the kept half) and factor
  out the second half of the channels. Loss: mean bits/dim, ``(-log p(y) + D bits log 2) / (D log 2)``.

The model's options are resolved as the flow task resolves them (:func:`experiments.tasks.flows.build_flow`,
so defaults and unknown fields behave as in a run); a builder raises ``NotImplementedError`` for what
it does not mirror: another architecture, rematerialisation (``model.remat``), a compute precision
other than float32, several seeds in one program (``num_seeds``). Layout is NCHW; parameters get
PyTorch's default initialisation except where gen_jax's initialisation defines the model's starting
point cheaply: zero-initialised conditioner outputs (a fresh coupling is the identity), the 1x1
convolutions' random-rotation start, and ActNorm's data-dependent initialisation (one forward pass on
the fixed batch at build time), so the twin's first loss is comparable to gen_jax's. Not mirrored
(as for every twin): the learning-rate schedule and the non-finite-update guard.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from experiments.benchmark.peers import Twin, images, one_player, points

LOG_2PI = math.log(2.0 * math.pi)


# -- the options a twin reads, resolved as the flow task resolves them ---------------------------------


def _gen_jax_flow(config, arch: str, kind: str, shape: tuple[int, ...]):
    """The (unbound) gen_jax flow module of ``config.model``, whose attributes the twin copies.

    Raises:
      NotImplementedError: an option the twins do not mirror.
    """
    from experiments.tasks.base import DataSpec
    from experiments.tasks.flows import build_flow

    got = config.model.get("arch")
    if got != arch:
        raise NotImplementedError(f"the {arch!r} flow twin does not mirror config.model.arch={got!r}")
    if int(config.get("num_seeds", 1) or 1) != 1:
        raise NotImplementedError(f"the flow twins train one seed, not config.num_seeds={config.num_seeds}")
    flow = build_flow(config, DataSpec(kind=kind, shape=tuple(shape), name=str(config.data.name)))
    if flow.remat is not None:
        raise NotImplementedError(f"the flow twins do not mirror config.model.remat={flow.remat!r}")
    if flow.precision.compute != "float32":
        raise NotImplementedError(f"the flow twins compute in float32, not "
                                  f"config.train.precision={flow.precision.compute!r}")
    return flow


def _soft_clamp(raw: torch.Tensor, bound: float) -> torch.Tensor:
    """``bound * tanh(raw / bound)`` (gen_jax's bounded log-scales)."""
    return bound * torch.tanh(raw / bound)


def _standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over every axis but the batch axis ``[B]``."""
    return -0.5 * (z * z + LOG_2PI).flatten(1).sum(1)


def _zero_init(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ActNorm(nn.Module):
    """``z = x * exp(log_scale) + bias`` per channel (dim 1); log|det| = positions * sum(log_scale)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def _view(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return p.view((1, -1) + (1,) * (x.ndim - 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions = math.prod(x.shape[2:])
        log_det = (positions * self.log_scale.sum()).expand(x.shape[0])
        return x * self._view(self.log_scale, x).exp() + self._view(self.bias, x), log_det

    @torch.no_grad()
    def data_init(self, x: torch.Tensor) -> None:
        """gen_jax's data-dependent initialisation: zero mean, unit variance per channel on ``x``."""
        dims = [0] + list(range(2, x.ndim))
        self.log_scale.copy_(-torch.log(x.std(dim=dims, unbiased=False) + self.eps))
        self.bias.copy_(-x.mean(dim=dims) * self.log_scale.exp())


def _actnorm_data_init(flow: nn.Module, x: torch.Tensor) -> None:
    """Initialises every ActNorm of ``flow`` from its input on one forward pass of ``x``."""
    handles = [m.register_forward_pre_hook(lambda m, args: m.data_init(args[0]))
               for m in flow.modules() if isinstance(m, ActNorm)]
    try:
        with torch.no_grad():
            flow.log_prob(x)
    finally:
        for h in handles:
            h.remove()


# -- RealNVP on vectors ------------------------------------------------------------------------------


class VectorCoupling(nn.Module):
    """gen_jax's ``AffineCoupling(mask='alternate', parity)`` on ``[B, D]``: the even (parity 0) or
    odd features condition an MLP (GELU hidden layers, zero-initialised output) that gives the
    bounded log-scale and shift of the others."""

    def __init__(self, dim: int, parity: int, hidden: tuple[int, ...], max_log_scale: float):
        super().__init__()
        first, second = np.arange(dim)[0::2], np.arange(dim)[1::2]
        idx_a, idx_b = (first, second) if parity == 0 else (second, first)
        self.register_buffer("idx_a", torch.as_tensor(idx_a), persistent=False)
        self.register_buffer("idx_b", torch.as_tensor(idx_b), persistent=False)
        self.register_buffer("unmerge", torch.as_tensor(np.argsort(np.concatenate([idx_a, idx_b]))),
                             persistent=False)
        self.nb = len(idx_b)
        self.max_log_scale = max_log_scale
        layers, width = [], len(idx_a)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU(approximate="tanh")]
            width = h
        layers.append(_zero_init(nn.Linear(width, 2 * self.nb)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_a, x_b = x[:, self.idx_a], x[:, self.idx_b]
        out = self.net(x_a)
        s = _soft_clamp(out[:, : self.nb], self.max_log_scale)
        y_b = x_b * s.exp() + out[:, self.nb:]
        return torch.cat([x_a, y_b], dim=1)[:, self.unmerge], s.sum(1)


class RealNVP(nn.Module):
    """gen_jax's ``RealNVP``: [ActNorm ->] affine coupling, ``num_layers`` times, parity alternating."""

    def __init__(self, dim: int, num_layers: int, hidden: tuple[int, ...], max_log_scale: float, actnorm: bool):
        super().__init__()
        layers = []
        for i in range(num_layers):
            if actnorm:
                layers.append(ActNorm(dim))
            layers.append(VectorCoupling(dim, i % 2, hidden, max_log_scale))
        self.layers = nn.ModuleList(layers)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x) = log N(f(x)) + log|det df/dx|`` ``[B]`` (nats)."""
        z, log_det = self.forward(x)
        return _standard_normal_log_prob(z) + log_det

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z = f(x)`` and ``log|det df/dx|`` ``[B]``."""
        log_det = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det


def realnvp_toy(config, batch: dict, compile: bool) -> Twin:
    """Twin of ``realnvp_toy``: RealNVP on the batch's points, mean NLL in nats."""
    x = points(batch)
    if x.ndim != 2:
        raise NotImplementedError(f"the realnvp_toy twin takes [B, D] points, got a batch of shape {tuple(x.shape)}")
    spec = _gen_jax_flow(config, "realnvp", "toy", tuple(x.shape[1:]))
    flow = RealNVP(x.shape[1], spec.num_layers, tuple(spec.hidden), spec.max_log_scale, spec.actnorm)
    if spec.actnorm:
        _actnorm_data_init(flow, x)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        return -flow.log_prob(x).mean()

    return one_player([flow], loss_fn, x, config.optim, compile)


# -- Glow on images ----------------------------------------------------------------------------------


class Squeeze(nn.Module):
    """Space-to-depth ``[B, C, H, W] -> [B, 4C, H/2, W/2]`` with gen_jax's channel order
    ``(dh, dw, c)``; log|det| = 0."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return y, x.new_zeros(b)


def _random_rotation(dim: int, seed: int) -> np.ndarray:
    """gen_jax's start of a 1x1 convolution: the sign-fixed Q of a seeded Gaussian matrix."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))[None, :]


class Invertible1x1Conv(nn.Module):
    """``z = W x`` at every position; LU: ``W = P (tril(lower, -1) + I) (triu(upper, 1) +
    diag(sign * exp(log_s)))`` with log|det| = positions * sum(log_s); plain: a free ``kernel`` with
    log|det| = positions * log|det kernel|."""

    def __init__(self, channels: int, lu: bool, seed: int):
        super().__init__()
        self.lu = lu
        w0 = _random_rotation(channels, seed)
        f32 = {"dtype": torch.float32}
        if lu:
            p, l0, u0 = scipy.linalg.lu(w0)
            s0 = np.diag(u0)
            self.register_buffer("p", torch.as_tensor(p, **f32), persistent=False)
            self.register_buffer("sign", torch.as_tensor(np.sign(s0), **f32), persistent=False)
            self.register_buffer("eye", torch.eye(channels), persistent=False)
            self.lower = nn.Parameter(torch.as_tensor(np.tril(l0, -1), **f32))
            self.upper = nn.Parameter(torch.as_tensor(np.triu(u0, 1), **f32))
            self.log_s = nn.Parameter(torch.as_tensor(np.log(np.abs(s0)), **f32))
        else:
            self.kernel = nn.Parameter(torch.as_tensor(w0, **f32))

    def weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W, log|det W|)``."""
        if not self.lu:
            return self.kernel, torch.linalg.slogdet(self.kernel)[1]
        lower = torch.tril(self.lower, -1) + self.eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * self.log_s.exp())
        return self.p @ lower @ upper, self.log_s.sum()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, log_det_w = self.weight()
        c = w.shape[0]
        log_det = (x.shape[2] * x.shape[3] * log_det_w).expand(x.shape[0])
        return F.conv2d(x, w.view(c, c, 1, 1)), log_det


class ConvNet(nn.Module):
    """gen_jax's coupling ConvNet: conv3x3(hidden[0]) -> ReLU -> [conv1x1(h) -> ReLU]... ->
    conv3x3(out, zero-initialised), 'SAME' padding."""

    def __init__(self, in_channels: int, hidden: tuple[int, ...], out_channels: int):
        super().__init__()
        layers = [nn.Conv2d(in_channels, hidden[0], 3, padding=1), nn.ReLU()]
        for a, b in itertools.pairwise(hidden):
            layers += [nn.Conv2d(a, b, 1), nn.ReLU()]
        layers.append(_zero_init(nn.Conv2d(hidden[-1], out_channels, 3, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ChannelCoupling(nn.Module):
    """gen_jax's ``AffineCoupling`` / ``AdditiveCoupling`` with ``mask='channel', parity=0``: the first
    half of the channels conditions the second, ``z_b = x_b * exp(s) + t`` (log|det| = sum s,
    ``s`` bounded) or ``z_b = x_b + t``."""

    def __init__(self, channels: int, hidden: tuple[int, ...], max_log_scale: float, additive: bool = False):
        super().__init__()
        self.na, self.nb = channels // 2, channels - channels // 2
        self.additive = additive
        self.max_log_scale = max_log_scale
        self.net = ConvNet(self.na, hidden, self.nb if additive else 2 * self.nb)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_a, x_b = x[:, : self.na], x[:, self.na:]
        out = self.net(x_a)
        if self.additive:
            return torch.cat([x_a, x_b + out], dim=1), x.new_zeros(x.shape[0])
        s = _soft_clamp(out[:, : self.nb], self.max_log_scale)
        y_b = x_b * s.exp() + out[:, self.nb:]
        return torch.cat([x_a, y_b], dim=1), s.flatten(1).sum(1)


class Glow(nn.Module):
    """gen_jax's ``Glow`` (with its pre-processing) on dequantised images in [0, 1), NCHW.

    ``levels[l]`` lists the level's layers in gen_jax's order (``Squeeze`` first), so ``levels[l][i]``
    is gen_jax's ``levels_l/layers_i``.
    """

    def __init__(self, image_shape: tuple[int, int, int], spec):
        super().__init__()
        if spec.preprocess not in ("logit", "affine"):
            raise NotImplementedError(f"the glow twin does not mirror model.preprocess={spec.preprocess!r}")
        self.preprocess, self.alpha = spec.preprocess, float(spec.alpha)
        hidden = tuple(spec.hidden)
        c = image_shape[2]
        levels = []
        for lvl in range(spec.num_levels):
            c *= 4
            layers: list[nn.Module] = [Squeeze()]
            for k in range(spec.num_steps):
                layers += [ActNorm(c), Invertible1x1Conv(c, spec.lu, lvl * spec.num_steps + k),
                           ChannelCoupling(c, hidden, spec.max_log_scale, spec.additive)]
            if spec.learn_split_prior and lvl < spec.num_levels - 1:
                layers.append(ChannelCoupling(c, hidden, spec.max_log_scale))
            levels.append(nn.ModuleList(layers))
            c //= 2  # the first half goes on, the second is factored out
        self.levels = nn.ModuleList(levels)

    def _preprocess(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.preprocess == "affine":  # x - 0.5: scale 1, log|det| = 0
            return x - 0.5, x.new_zeros(x.shape[0])
        scale = 1.0 - 2.0 * self.alpha
        eps = torch.finfo(x.dtype).eps
        p = (self.alpha + scale * x).clamp(eps, 1.0 - eps)
        z = torch.log(p) - torch.log1p(-p)
        log_det = (math.log(scale) + F.softplus(z) + F.softplus(-z)).flatten(1).sum(1)
        return z, log_det

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` ``[B]`` (nats) of ``x`` in [0, 1)^D: pre-processing, the levels with their
        factor-outs, and a standard normal on every factored-out part."""
        h, log_det = self._preprocess(x)
        log_pz = x.new_zeros(x.shape[0])
        for i, level in enumerate(self.levels):
            for layer in level:
                h, ld = layer(h)
                log_det = log_det + ld
            if i < len(self.levels) - 1:
                c = h.shape[1]
                log_pz = log_pz + _standard_normal_log_prob(h[:, c // 2:])
                h = h[:, : c // 2]
        return log_pz + _standard_normal_log_prob(h) + log_det


def glow_mnist(config, batch: dict, compile: bool) -> Twin:
    """Twin of ``glow_mnist``: Glow on the batch's uint8 images, dequantised in the step, mean bits/dim."""
    if batch["x"].dtype != np.uint8 or batch["x"].ndim != 4:
        raise NotImplementedError(f"the glow twin takes uint8 [B, H, W, C] images, got {batch['x'].dtype} "
                                  f"{batch['x'].shape}")
    image_shape = tuple(batch["x"].shape[1:])
    spec = _gen_jax_flow(config, "glow", "image", image_shape)
    num_bits = int(config.objective.get("num_bits", 8))
    x = images(batch)  # [B, C, H, W] in [0, 255]
    num_dims = math.prod(image_shape)
    flow = Glow(image_shape, spec)
    _actnorm_data_init(flow, (x + torch.rand_like(x)) / 2.0**num_bits)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        y = (x + torch.rand_like(x)) / 2.0**num_bits  # uniform dequantisation
        nll_nats = -flow.log_prob(y) + num_dims * num_bits * math.log(2.0)
        return (nll_nats / (num_dims * math.log(2.0))).mean()

    return one_player([flow], loss_fn, x, config.optim, compile)
