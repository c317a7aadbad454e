"""PyTorch twins of the DDPM configs' train steps (``ddpm_toy``: residual-MLP denoiser on 2-D points;
``ddpm_mnist``: the DDPM U-Net on 28x28x1 images).

What a twin mirrors of gen_jax's step (:meth:`gen_jax.diffusion.DiffusionModel.objective` on the denoiser of
:func:`experiments.tasks.diffusion.build_denoiser`, then the optimizer update):

* the data space: uint8 images -> ``x / 127.5 - 1`` inside the step, as gen_jax's ``to_model_space`` does
  (toy points are used as they are);
* per example a timestep ``t ~ U{1..T}`` and ``eps ~ N(0, I)`` drawn with torch inside the (compiled) loss,
  ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps`` from gen_jax's own schedule for the config
  (:func:`experiments.tasks.diffusion.build_schedule`), the network called on the integer ``t`` in 1..T;
* the loss: the eps / x0 / v target per ``objective.parameterization``, mean over each example's dimensions,
  times gen_jax's weight table for ``objective.weighting`` (:func:`gen_jax.diffusion.loss_weight`; skipped for
  'simple', where it is 1), mean over the batch;
* the networks layer by layer, with the same parameter count: the sinusoidal time embedding and its MLP,
  LayerNorm (epsilon 1e-6) in the MLP, GroupNorm (``norm_groups``, epsilon 1e-6), swish, residual blocks with
  the time projection and a 1x1 projection on the skip when the channels change, single- or multi-head
  self-attention (1x1 qkv and output projections), stride-2 3x3 conv downsampling with XLA's 'SAME' padding
  (one row and column after), nearest-neighbour upsampling and a 3x3 conv, the skip concatenations, dropout
  when ``model.dropout`` > 0; in PyTorch's NCHW layout with its default initialisation (timing only);
* the optimizer: :class:`~experiments.benchmark.peers.Updater` over ``config.optim`` (Adam, global-norm
  clipping, EMA).

What it does not: class-conditional models (label embedding, label dropout), Fourier input features,
rematerialisation, reduced-precision compute and the other processes ('vdm', 'fm') raise
``NotImplementedError``; attention uses ``F.scaled_dot_product_attention`` (the same maths as gen_jax's
einsum-softmax-einsum, PyTorch's fused kernel); the learning-rate schedule and the non-finite-update guard are
not copied (see the package docstring).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from experiments.benchmark.peers import Twin, images, one_player, points

# -- networks ------------------------------------------------------------------------------------------------


class TimeEmbedding(nn.Module):
    """t -> Linear(sinusoid(t)) -> swish -> Linear (gen_jax's ``TimeEmbedding``; sin half then cos half,
    frequencies ``10000^(-i / (dim/2 - 1))``)."""

    def __init__(self, sinusoid_dim: int, features: int):
        super().__init__()
        if sinusoid_dim % 2 or sinusoid_dim < 4:
            raise ValueError(f"timestep embedding dim must be even and >= 4; got {sinusoid_dim}")
        half = sinusoid_dim // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.dense0 = nn.Linear(sinusoid_dim, features)
        self.dense1 = nn.Linear(features, features)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs[None, :]
        h = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
        return self.dense1(F.silu(self.dense0(h)))


class MLPDenoiser(nn.Module):
    """gen_jax's ``MLPDenoiser``: h = Linear(x) + swish(temb); per block
    h += Linear(swish(Linear(swish(LN(h))) + Linear(temb))); out = Linear(swish(LN(h)))."""

    def __init__(self, dim: int, hidden: int, num_blocks: int, time_dim: int):
        super().__init__()
        self.temb = TimeEmbedding(time_dim, hidden)
        self.dense_in = nn.Linear(dim, hidden)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden, eps=1e-6) for _ in range(num_blocks))
        self.dense0 = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_blocks))
        self.temb_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_blocks))
        self.dense1 = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_blocks))
        self.norm_out = nn.LayerNorm(hidden, eps=1e-6)
        self.dense_out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = F.silu(self.temb(t))
        h = self.dense_in(x) + temb
        for norm, d0, tp, d1 in zip(self.norms, self.dense0, self.temb_proj, self.dense1):
            r = d0(F.silu(norm(h))) + tp(temb)
            h = h + d1(F.silu(r))
        return self.dense_out(F.silu(self.norm_out(h)))


def _group_norm(groups: int, channels: int) -> nn.GroupNorm:
    if channels % groups:
        raise ValueError(f"GroupNorm: channels={channels} is not divisible by norm_groups={groups}")
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """h = skip(x) + conv1(dropout(swish(GN(conv0(swish(GN(x))) + Linear(swish(temb))))))."""

    def __init__(self, c_in: int, c_out: int, temb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm0 = _group_norm(groups, c_in)
        self.conv0 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, c_out)
        self.norm1 = _group_norm(groups, c_out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv1 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()  # gen_jax's Dense over C

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """x + proj_out(softmax(q k^T / sqrt(d)) v) over the H*W positions, q, k, v = split(qkv(GN(x)))."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention: channels={channels} not divisible by num_heads={heads}")
        self.heads = heads
        self.norm = _group_norm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        # channels ordered (q|k|v, head, d) as gen_jax splits its last axis
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = (a.transpose(-1, -2) for a in qkv.unbind(1))  # [B, heads, N, d]
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj_out(out)


class ResAttn(nn.Module):
    """A ResBlock, followed by self-attention at the attention resolutions."""

    def __init__(self, c_in: int, c_out: int, temb_dim: int, groups: int, dropout: float, attn_heads: int | None):
        super().__init__()
        self.res = ResBlock(c_in, c_out, temb_dim, groups, dropout)
        self.attn = AttentionBlock(c_out, attn_heads, groups) if attn_heads else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.res(x, temb)
        return self.attn(h) if self.attn is not None else h


class Downsample(nn.Module):
    """Stride-2 3x3 conv with XLA's 'SAME' padding of an even size (0 before, 1 after)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """gen_jax's DDPM ``UNet`` (unconditional, no Fourier features, resampling with convs) in NCHW."""

    def __init__(self, in_ch: int, size: int, ch: int, ch_mult, num_res_blocks: int, attn_resolutions,
                 dropout: float, num_heads: int, norm_groups: int):
        super().__init__()
        levels = len(ch_mult)
        if size % (2 ** (levels - 1)):
            raise ValueError(f"image size {size} must be divisible by 2^(len(ch_mult)-1) = {2 ** (levels - 1)}")
        temb_dim = 4 * ch
        self.temb = TimeEmbedding(ch, temb_dim)

        def block(c_in: int, c_out: int, res: int) -> ResAttn:
            return ResAttn(c_in, c_out, temb_dim, norm_groups, dropout, num_heads if res in attn_resolutions else None)

        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        chans, cur, res = [ch], ch, size  # channels of every skip, in push order
        self.down = nn.ModuleList()  # ResAttn and Downsample; each output is a skip
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down.append(block(cur, ch * mult, res))
                cur = ch * mult
                chans.append(cur)
            if level != levels - 1:
                self.down.append(Downsample(cur))
                chans.append(cur)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(cur, cur, temb_dim, norm_groups, dropout),
                                  AttentionBlock(cur, num_heads, norm_groups),
                                  ResBlock(cur, cur, temb_dim, norm_groups, dropout)])
        self.up = nn.ModuleList()  # ResAttn (on the concatenated skip) and Upsample
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(block(cur + chans.pop(), ch * mult, res))
                cur = ch * mult
            if level != 0:
                self.up.append(Upsample(cur))
                res *= 2
        assert not chans, "every skip connection is consumed"
        self.norm_out = _group_norm(norm_groups, cur)
        self.conv_out = nn.Conv2d(cur, in_ch, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.temb(t)
        hs = [self.conv_in(x)]
        for m in self.down:
            hs.append(m(hs[-1], temb) if isinstance(m, ResAttn) else m(hs[-1]))
        res0, attn, res1 = self.mid
        h = res1(attn(res0(hs[-1], temb)), temb)
        for m in self.up:
            h = m(torch.cat([h, hs.pop()], dim=1), temb) if isinstance(m, ResAttn) else m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# -- the train step ------------------------------------------------------------------------------------------


def _check_supported(config) -> None:
    """Raises NotImplementedError for the config options the twins do not mirror."""
    obj, m = config.objective, config.model
    unsupported = {
        "objective.process": (obj.get("process", "ddpm"), "ddpm"),
        "model.class_conditional": (bool(m.get("class_conditional", False)), False),
        "model.fourier_features": (tuple(m.get("fourier_features", ()) or ()), ()),
        "model.remat": (m.get("remat", None), None),
        "train.precision": (str(config.train.get("precision", "float32")), "float32"),
    }
    for field, (value, mirrored) in unsupported.items():
        if value != mirrored:
            raise NotImplementedError(f"the PyTorch DDPM twin mirrors {field}={mirrored!r}, not {value!r}")
    if obj.parameterization not in ("eps", "x0", "v"):
        raise NotImplementedError(f"the DDPM twin mirrors parameterization 'eps'/'x0'/'v', "
                                  f"not {obj.parameterization!r}")


def _tables(config) -> dict[str, torch.Tensor]:
    """sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t) and the loss weight w_t ([T], entry t - 1) of gen_jax's
    schedule for ``config.objective`` (no 'weight' for 'simple' weighting)."""
    import jax.numpy as jnp

    from experiments.tasks.diffusion import build_schedule
    from gen_jax.diffusion import loss_weight

    obj = config.objective
    schedule = build_schedule(obj)

    def as_torch(a) -> torch.Tensor:
        return torch.tensor(np.asarray(a), dtype=torch.float32)

    tables = {"sqrt_ab": as_torch(schedule.sqrt_alpha_bars),
              "sqrt_1m_ab": as_torch(schedule.sqrt_one_minus_alpha_bars)}
    if obj.weighting != "simple":
        t = jnp.arange(1, schedule.num_timesteps + 1, dtype=jnp.int32)
        tables["weight"] = as_torch(loss_weight(schedule, t, parameterization=obj.parameterization,
                                                weighting=obj.weighting, min_snr_gamma=obj.min_snr_gamma,
                                                variance=obj.variance))
    return tables


def _twin(config, model: nn.Module, x: torch.Tensor, to_model_space, compile: bool) -> Twin:
    """The DDPM train step of ``model`` on the fixed batch ``x`` (``to_model_space`` applied in the step)."""
    tables = _tables(config)
    sqrt_ab, sqrt_1m_ab, weight = tables["sqrt_ab"], tables["sqrt_1m_ab"], tables.get("weight")
    T = sqrt_ab.shape[0]
    parameterization = config.objective.parameterization

    def loss_fn(batch_x: torch.Tensor) -> torch.Tensor:
        x0 = to_model_space(batch_x)
        B = x0.shape[0]
        t = torch.randint(1, T + 1, (B,))
        eps = torch.randn_like(x0)
        bshape = (B,) + (1,) * (x0.ndim - 1)
        a, s = sqrt_ab[t - 1].view(bshape), sqrt_1m_ab[t - 1].view(bshape)
        out = model(a * x0 + s * eps, t)
        target = eps if parameterization == "eps" else x0 if parameterization == "x0" else a * eps - s * x0
        per_ex = (target - out).square().flatten(1).mean(1)
        if weight is not None:
            per_ex = weight[t - 1] * per_ex
        return per_ex.mean()

    model.train()
    return one_player([model], loss_fn, x, config.optim, compile)


def ddpm_toy(config, batch: dict, compile: bool = False) -> Twin:
    """Twin of ``ddpm_toy``: the residual-MLP eps-denoiser on the fixed batch of 2-D points."""
    _check_supported(config)
    m = config.model
    if m.arch != "mlp":
        raise NotImplementedError(f"the ddpm_toy twin mirrors model.arch='mlp', not {m.arch!r}")
    x = points(batch)
    model = MLPDenoiser(x.shape[1], m.hidden, m.num_blocks, m.time_dim)
    return _twin(config, model, x, lambda v: v, compile)


def ddpm_mnist(config, batch: dict, compile: bool = False) -> Twin:
    """Twin of ``ddpm_mnist``: the DDPM U-Net on the fixed batch of uint8 images (scaled to [-1, 1] in the step)."""
    _check_supported(config)
    m = config.model
    if m.arch != "unet":
        raise NotImplementedError(f"the ddpm_mnist twin mirrors model.arch='unet', not {m.arch!r}")
    x = images(batch)  # float32 [B, C, H, W] in [0, 255]
    _, C, H, W = x.shape
    if H != W:
        raise NotImplementedError(f"the U-Net twin mirrors square images, not {H}x{W}")
    model = UNet(C, H, m.ch, tuple(m.ch_mult), m.num_res_blocks, tuple(m.attn_resolutions), float(m.dropout),
                 int(m.get("num_heads", 1)), m.norm_groups)
    return _twin(config, model, x, lambda v: v / 127.5 - 1.0, compile)
