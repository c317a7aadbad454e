"""The GAN training objective as the engine's two-player loss functions.

:func:`make_gan_losses` closes over a generator ``G``, a discriminator ``D`` and the loss kind and
returns ``(d_loss_fn, g_loss_fn)`` with the signatures of
:func:`gen_jax.train.make_two_player_step`::

    d_loss_fn(d_params, g_params, batch, rng[, d_batch_stats])
    g_loss_fn(g_params, d_params, batch, rng[, d_batch_stats])

Real examples come from ``batch['x']``: float ``[B, D]`` points are used as they are; ``uint8``
images ``[B, H, W, C]`` are scaled to ``[-1, 1]`` (``x / 127.5 - 1``, the range of the DCGAN
generator's ``tanh``). Each step draws ``B`` fresh ``z ~ N(0, I)``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.gan import losses as L
from gen_jax.gan.sampling import generate



def preprocess(x: jax.Array) -> jax.Array:
    """Real data in the generator's output space: ``uint8`` images -> ``[-1, 1]``; floats unchanged."""
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / 127.5 - 1.0
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"batch['x'] must be uint8 images or float points, got dtype {x.dtype}")
    return x


def pack(x: jax.Array, m: int) -> jax.Array:
    """PacGAN packing (Lin et al., 2018): ``m`` consecutive examples become one D input.

    ``[B, D] -> [B/m, m*D]`` for vectors; ``[B, H, W, C] -> [B/m, H, W, m*C]`` for images.
    """
    if m == 1:
        return x
    if x.shape[0] % m:
        raise ValueError(f"batch size {x.shape[0]} is not divisible by pack={m}")
    x = x.reshape((x.shape[0] // m, m) + x.shape[1:])  # [B/m, m, ...]
    x = jnp.moveaxis(x, 1, -2)  # [B/m, ..., m, C]
    return x.reshape(x.shape[:-2] + (m * x.shape[-1],))


def make_gan_losses(
    generator: nn.Module,
    discriminator: nn.Module,
    *,
    latent_dim: int,
    loss: str = "non_saturating",
    gp_weight: float = 0.0,
    r1_weight: float = 0.0,
    conditional: bool = False,
    pack_size: int = 1,
) -> tuple[Callable[..., tuple[jax.Array, Any]], Callable[..., tuple[jax.Array, Any]]]:
    """Discriminator and generator losses for the engine's two-player step.

    Discriminator loss (minimised), per real/fake pair ``i``::

        d_i = d_real(l(x_i)) + d_fake(l(G(z_i)))
              + gp_weight * (||grad D(x_hat_i)|| - 1)^2 + r1_weight / 2 * ||grad D(x_i)||^2

    with ``d_real, d_fake`` from :func:`gen_jax.gan.losses.discriminator_loss_terms` (for
    ``'minimax'``/``'non_saturating'``: ``-log D(x) - log(1 - D(G(z)))``, i.e. ``-V``). Generator loss:
    mean of :func:`gen_jax.gan.losses.generator_loss_terms` on ``l(G(z))`` (``'minimax'``: the seed's
    ``E log(1 - D(G(z)))``).

    Args:
      generator: ``G(z[, labels])``.
      discriminator: ``D(x[, labels], update_stats=...) -> [B]`` logits.
      latent_dim: dimension of ``z``.
      loss: one of :data:`gen_jax.gan.losses.LOSS_KINDS`.
      gp_weight: WGAN-GP weight ``lambda`` (0 disables).
      r1_weight: R1 weight ``gamma`` (adds ``gamma / 2 * E||grad_x D(x)||^2``; 0 disables).
      conditional: pass ``batch['label']`` to both players (fakes use the real batch's labels).
      pack_size: PacGAN packing degree ``m`` (D sees ``m`` examples at once; 1 disables).

    Returns:
      ``(d_loss_fn, g_loss_fn)``. When called with ``d_batch_stats`` (D has spectral norm),
      ``d_loss_fn`` returns ``(loss, (metrics, new_d_batch_stats))``; otherwise ``(loss, metrics)``.
    """
    if loss not in L.LOSS_KINDS:
        raise ValueError(f"loss must be one of {L.LOSS_KINDS}, got {loss!r}")
    if gp_weight < 0 or r1_weight < 0:
        raise ValueError(f"gp_weight and r1_weight must be >= 0, got {gp_weight!r}, {r1_weight!r}")
    if latent_dim < 1:
        raise ValueError(f"latent_dim must be >= 1, got {latent_dim!r}")
    if pack_size < 1:
        raise ValueError(f"pack_size must be >= 1, got {pack_size!r}")
    if conditional and pack_size > 1:
        raise ValueError("packing (pack_size > 1) cannot be combined with class conditioning")

    def d_apply(d_params, d_stats, x, labels, update_stats):
        """D logits ``[B]`` and the (possibly updated) spectral-norm statistics."""
        variables = {"params": d_params}
        if d_stats is None:
            return discriminator.apply(variables, x, labels, update_stats=False), None
        variables["batch_stats"] = d_stats
        if update_stats:
            logits, mutated = discriminator.apply(variables, x, labels, update_stats=True,
                                                  mutable=["batch_stats"])
            return logits, mutated["batch_stats"]
        return discriminator.apply(variables, x, labels, update_stats=False), d_stats

    def labels_of(batch):
        if not conditional:
            return None
        if "label" not in batch:
            raise ValueError("conditional=True needs batch['label']")
        return batch["label"]

    def d_loss_fn(d_params, g_params, batch, rng, d_batch_stats=None):
        real = preprocess(batch["x"])  # [B, ...]
        labels = labels_of(batch)
        z_key, gp_key = jax.random.split(rng)
        fake = jax.lax.stop_gradient(
            generate(generator, g_params, z_key, real.shape[0], latent_dim=latent_dim, labels=labels))
        real_in, fake_in = pack(real, pack_size), pack(fake, pack_size)
        n = real_in.shape[0]
        both_labels = None if labels is None else jnp.concatenate([labels, labels])
        logits, new_stats = d_apply(d_params, d_batch_stats, jnp.concatenate([real_in, fake_in]),
                                    both_labels, True)
        real_logits, fake_logits = logits[:n], logits[n:]
        real_terms, fake_terms = L.discriminator_loss_terms(real_logits, fake_logits, loss)
        per_example = real_terms + fake_terms  # [B / pack_size]

        def critic(x):
            return d_apply(d_params, new_stats, x, labels, False)[0]

        metrics = {
            "d_real_prob": jnp.mean(jax.nn.sigmoid(real_logits)),
            "d_fake_prob": jnp.mean(jax.nn.sigmoid(fake_logits)),
            "d_value_nats": L.value_function(real_logits, fake_logits),
            "d_logit_gap": jnp.mean(real_logits) - jnp.mean(fake_logits),
        }
        if gp_weight > 0:
            gp = L.gradient_penalty(critic, real_in, fake_in, gp_key)
            per_example = per_example + gp_weight * gp
            metrics["d_gp"] = jnp.mean(gp)
        if r1_weight > 0:
            r1 = L.r1_penalty(critic, real_in)
            per_example = per_example + 0.5 * r1_weight * r1
            metrics["d_r1"] = jnp.mean(r1)
        d_loss = jnp.mean(per_example)
        if d_batch_stats is None:
            return d_loss, metrics
        return d_loss, (metrics, new_stats)

    def g_loss_fn(g_params, d_params, batch, rng, d_batch_stats=None):
        labels = labels_of(batch)
        fake = generate(generator, g_params, rng, batch["x"].shape[0], latent_dim=latent_dim, labels=labels)
        fake_logits, _ = d_apply(d_params, d_batch_stats, pack(fake, pack_size), labels, False)
        g_loss = jnp.mean(L.generator_loss_terms(fake_logits, loss))
        return g_loss, {"g_fake_prob": jnp.mean(jax.nn.sigmoid(fake_logits))}

    return d_loss_fn, g_loss_fn
