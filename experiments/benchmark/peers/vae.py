"""PyTorch twins of the VAE configs: ``vae_toy`` (MLP encoder/decoder, Gaussian decoder with learned
log-scale clipped at -7) and ``vae_conv_mnist`` (stride-2 3x3 convolutions down, sub-pixel 3x3
convolutions up, Bernoulli decoder on dynamically binarised pixels). Loss as gen_jax's
:class:`gen_jax.vae.VariationalAutoencoder` with ``iwae_k=1``: minus the batch mean of
E_q log p(x|z) - beta KL(q(z|x) || N(0, I)), one reparameterised sample, the analytic KL.

Not mirrored: PyTorch pads a stride-2 'SAME' convolution of an even image symmetrically (1, 1) where XLA
pads (0, 1) (the same cost), and ``nn.PixelShuffle`` orders the sub-pixel channels differently from
gen_jax's depth-to-space (a permutation of the same layer).
"""

from __future__ import annotations

import math

from experiments.benchmark.peers import Twin, images, one_player, points

LOG_2PI = math.log(2.0 * math.pi)


def _check(config, **expected) -> None:
    for key, want in expected.items():
        section, field = key.split("__")
        got = config[section].get(field)
        if got != want:
            raise NotImplementedError(f"the PyTorch twin mirrors {section}.{field}={want!r}, not {got!r}")


def _activation(name: str):
    import torch.nn as nn

    table = {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "tanh": nn.Tanh, "softplus": nn.Softplus,
             "swish": nn.SiLU}
    if name not in table:
        raise NotImplementedError(f"no twin for model.activation={name!r}")
    return table[name]()


def _kl(mean, log_var):
    return 0.5 * (log_var.exp() + mean.square() - 1.0 - log_var).sum(-1)


def _reparameterise(mean, log_var):
    import torch

    return mean + (0.5 * log_var).exp() * torch.randn_like(mean)


def vae_toy(config, batch: dict, compile: bool) -> Twin:
    """MLP VAE on toy points with the learned-variance Gaussian decoder."""
    import torch
    import torch.nn as nn

    _check(config, model__arch="mlp", objective__likelihood="gaussian", objective__kl="analytic",
           objective__iwae_k=1)
    m, beta = config.model, float(config.objective.beta)
    x = points(batch)
    dim, k = x.shape[1], int(m.latent_dim)

    def mlp(sizes, out):
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), _activation(m.activation)]
        return nn.Sequential(*layers, nn.Linear(sizes[-1], out))

    hidden = list(m.hidden)
    encoder = mlp([dim, *hidden], 2 * k)
    decoder = mlp([k, *reversed(hidden)], 2 * dim)

    def loss_fn(x):
        mean, log_var = encoder(x).chunk(2, dim=-1)
        z = _reparameterise(mean, log_var)
        mu, log_s = decoder(z).chunk(2, dim=-1)
        log_s = torch.clamp(log_s, min=-7.0)
        recon = (-0.5 * (LOG_2PI + 2.0 * log_s + (x - mu).square() * torch.exp(-2.0 * log_s))).sum(-1)
        return -(recon - beta * _kl(mean, log_var)).mean()

    return one_player([encoder, decoder], loss_fn, x, config.optim, compile)


def vae_conv_mnist(config, batch: dict, compile: bool) -> Twin:
    """Convolutional VAE on dynamically binarised images with the Bernoulli decoder."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    _check(config, model__arch="conv", model__upsample="subpixel", model__downsample="strided",
           objective__likelihood="bernoulli", objective__kl="analytic", objective__iwae_k=1,
           objective__binarize="dynamic")
    m, beta = config.model, float(config.objective.beta)
    u = images(batch) / 255.0  # [B, C, H, W] in [0, 1]: the Bernoulli means of the dynamic binarisation
    channels, height, width = u.shape[1:]
    features, k, dense = list(m.features), int(m.latent_dim), int(m.dense)
    factor = 2 ** len(features)
    act = _activation(m.activation)

    enc_layers, c = [], channels
    for f in features:
        enc_layers += [nn.Conv2d(c, f, 3, stride=2, padding=1), act]
        c = f
    flat = c * (height // factor) * (width // factor)
    enc_layers += [nn.Flatten(), nn.Linear(flat, dense), act, nn.Linear(dense, 2 * k)]
    encoder = nn.Sequential(*enc_layers)

    up = list(reversed(features))
    dec_layers = [nn.Linear(k, dense), act, nn.Linear(dense, up[0] * (height // factor) * (width // factor)), act,
                  nn.Unflatten(1, (up[0], height // factor, width // factor))]
    c = up[0]
    for f in up:  # gen_jax.nn.Upsample2x('subpixel'): 3x3 conv to 4f channels, depth-to-space
        dec_layers += [nn.Conv2d(c, 4 * f, 3, padding=1), nn.PixelShuffle(2), act]
        c = f
    dec_layers.append(nn.Conv2d(c, channels, 3, padding=1))  # Bernoulli logits
    decoder = nn.Sequential(*dec_layers)

    def loss_fn(u):
        x = torch.bernoulli(u)
        mean, log_var = encoder(x).chunk(2, dim=-1)
        logits = decoder(_reparameterise(mean, log_var))
        recon = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(-1)
        return -(recon - beta * _kl(mean, log_var)).mean()

    return one_player([encoder, decoder], loss_fn, u, config.optim, compile)
