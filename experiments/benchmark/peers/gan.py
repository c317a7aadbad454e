"""PyTorch twins of the GAN configs: ``gan_ring8`` (3x128 ReLU MLP generator, 3x128 LeakyReLU(0.2) MLP
discriminator, R1 penalty) and ``dcgan_mnist`` (dense -> 7x7 -> sub-pixel 3x3 upsampling with GroupNorm,
tanh; 4x4 stride-2 LeakyReLU(0.2) convolutions -> linear head). One step as gen_jax's two-player step
(:func:`gen_jax.train.make_two_player_step` with ``n_critic=1``): a discriminator update on the real batch
and a detached fake batch (one D call on both concatenated; non-saturating loss, plus gamma/2 E||grad_x
D(x)||^2 on the real batch where ``r1_weight`` > 0), then a generator update on fresh z through the updated
D (D's parameters frozen, as only G's gradient is taken). Both players' optimizers from the config
(``d_optim`` fields that are None inherit ``optim``); the EMA is the generator's.

Not mirrored: ``torch.compile`` has no double backward, so the R1 penalty's twin runs eager only (the
compiled variant raises NotImplementedError); PyTorch's PixelShuffle orders the sub-pixel channels
differently from gen_jax's depth-to-space (a permutation of the same layer).
"""

from __future__ import annotations

import math

from experiments.benchmark.peers import Twin, Updater, images, maybe_compile, points


def _check(config) -> None:
    o = config.objective
    if o.loss != "non_saturating" or o.gp_weight or o.n_critic != 1 or o.pack_size != 1 or config.model.conditional \
            or config.model.spectral_norm:
        raise NotImplementedError(
            "the PyTorch GAN twins mirror the non-saturating loss, n_critic=1, no gradient penalty, no packing, "
            "no class conditioning and no spectral norm")


def _d_optim(config):
    """``config.d_optim`` with its unset fields taken from ``config.optim`` (as the GAN task builds it)."""
    d = config.get("d_optim") or {}
    return type(config.optim)({k: (d.get(k) if d.get(k) is not None else v) for k, v in config.optim.items()})


def _game(config, generator, discriminator, real, latent_dim: int, compile: bool) -> Twin:
    """The two-player step over given networks and a fixed real batch (in the generator's output space)."""
    import torch
    import torch.nn.functional as F

    gamma = float(config.objective.r1_weight)
    if gamma and compile:
        raise NotImplementedError("torch.compile does not support the double backward of the R1 penalty")
    n = real.shape[0]

    def d_loss_fn(real):
        with torch.no_grad():
            fake = generator(torch.randn(n, latent_dim))
        logits = discriminator(torch.cat([real, fake]))
        loss = F.softplus(-logits[:n]) + F.softplus(logits[n:])  # -log D(x) - log(1 - D(G(z)))
        if gamma:
            x = real.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(discriminator(x).sum(), x, create_graph=True)
            loss = loss + 0.5 * gamma * grad.square().flatten(1).sum(-1)
        return loss.mean()

    def g_loss_fn():
        return F.softplus(-discriminator(generator(torch.randn(n, latent_dim)))).mean()

    d_loss_fn, g_loss_fn = maybe_compile(d_loss_fn, compile), maybe_compile(g_loss_fn, compile)
    d_update = Updater([discriminator], _d_optim(config), ema_decay=0.0)
    g_update = Updater([generator], config.optim)

    def step():
        d_loss = d_loss_fn(real)
        d_update(d_loss)
        discriminator.requires_grad_(False)
        g_loss = g_loss_fn()
        g_update(g_loss)
        discriminator.requires_grad_(True)
        return d_loss.detach() + g_loss.detach()

    return Twin({"G": [generator], "D": [discriminator]}, step)


def gan_ring8(config, batch: dict, compile: bool) -> Twin:
    """MLP players on toy points."""
    import torch.nn as nn

    _check(config)
    m = config.model
    if m.arch != "mlp":
        raise NotImplementedError(f"gan_ring8's twin is the MLP GAN, not model.arch={m.arch!r}")
    real = points(batch)
    dim = real.shape[1]

    def mlp(sizes, out, act):
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), act()]
        return nn.Sequential(*layers, nn.Linear(sizes[-1], out))

    generator = mlp([m.latent_dim, *m.g_hidden], dim, nn.ReLU)
    discriminator = nn.Sequential(mlp([dim, *m.d_hidden], 1, lambda: nn.LeakyReLU(0.2)), nn.Flatten(0))
    return _game(config, generator, discriminator, real, int(m.latent_dim), compile)


def dcgan_mnist(config, batch: dict, compile: bool) -> Twin:
    """DCGAN players on 28x28 images (7 -> 14 -> 28)."""
    import torch.nn as nn

    _check(config)
    m = config.model
    if (m.arch, m.g_norm, m.g_upsample, m.d_downsample) != ("dcgan", "group", "subpixel", "strided"):
        raise NotImplementedError("dcgan_mnist's twin mirrors arch='dcgan', g_norm='group', g_upsample='subpixel', "
                                  "d_downsample='strided'")
    real = images(batch) * (2.0 / 255.0) - 1.0  # [B, C, H, W] in [-1, 1]
    channels, height = real.shape[1], real.shape[2]
    start, doublings = 7, int(math.log2(height // 7))
    if start * 2**doublings != height:
        raise NotImplementedError(f"the DCGAN twin builds 7 * 2^k images, not {height}")
    f = m.g_features * 2 ** (doublings - 1)
    g_layers = [nn.Linear(m.latent_dim, start * start * f), nn.Unflatten(1, (f, start, start)),
                nn.GroupNorm(math.gcd(32, f), f), nn.ReLU()]
    for _ in range(doublings - 1):  # gen_jax.nn.Upsample2x('subpixel'): 3x3 conv to 4x channels, depth-to-space
        g_layers += [nn.Conv2d(f, 4 * (f // 2), 3, padding=1), nn.PixelShuffle(2), nn.GroupNorm(math.gcd(32, f // 2),
                                                                                                f // 2), nn.ReLU()]
        f //= 2
    g_layers += [nn.Conv2d(f, 4 * channels, 3, padding=1), nn.PixelShuffle(2), nn.Tanh()]
    generator = nn.Sequential(*g_layers)
    d_layers, c = [], channels
    for i in range(doublings):
        d_layers += [nn.Conv2d(c, m.d_features * 2**i, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        c = m.d_features * 2**i
    d_layers += [nn.Flatten(), nn.Linear(c * start * start, 1), nn.Flatten(0)]
    discriminator = nn.Sequential(*d_layers)
    return _game(config, generator, discriminator, real, int(m.latent_dim), compile)
