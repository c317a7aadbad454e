"""A GAN as a :class:`gen_jax.model.TwoPlayerModel`: the seed's game and its modern losses.

:class:`GAN` holds a generator ``G``, a discriminator ``D`` and the loss kind; its ``d_loss`` and
``g_loss`` have the one signature of :mod:`gen_jax.model` over the joint trees
``params = {'g': ..., 'd': ...}`` and ``model_state = {'g': {}, 'd': {...}}`` (D's spectral-norm
statistics under ``'batch_stats'``), for :func:`gen_jax.train.make_two_player_step`.

Real examples come from ``batch['x']``: float ``[B, D]`` points are used as they are; ``uint8``
images ``[B, H, W, C]`` are scaled to ``[-1, 1]`` (``x / 127.5 - 1``, the range of the DCGAN
generator's ``tanh``). Each step draws ``B`` fresh ``z ~ N(0, I)``.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.data.preprocess import to_symmetric
from gen_jax.gan import losses as L
from gen_jax.gan.models import init_gan
from gen_jax.gan.sampling import generate
from gen_jax.precision import Policy



def preprocess(x: jax.Array) -> jax.Array:
    """Real data in the generator's output space: ``uint8`` images -> ``[-1, 1]``; floats unchanged."""
    if x.dtype == jnp.uint8:
        return to_symmetric(x)
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


@dataclasses.dataclass(frozen=True)
class GAN:
    """The two players and their losses.

    Discriminator loss (minimised over D), per real/fake pair ``i``::

        d_i = d_real(l(x_i)) + d_fake(l(G(z_i)))
              + gp_weight * (||grad D(x_hat_i)|| - 1)^2 + r1_weight / 2 * ||grad D(x_i)||^2

    with ``d_real, d_fake`` from :func:`gen_jax.gan.losses.discriminator_loss_terms` (for
    ``'minimax'``/``'non_saturating'``: ``-log D(x) - log(1 - D(G(z)))``, i.e. ``-V``). Generator loss:
    mean of :func:`gen_jax.gan.losses.generator_loss_terms` on ``l(G(z))`` (``'minimax'``: the seed's
    ``E log(1 - D(G(z)))``).

    Attributes:
      generator: ``G(z[, labels])``.
      discriminator: ``D(x[, labels], update_stats=...) -> [B]`` logits.
      latent_dim: dimension of ``z``.
      loss: one of :data:`gen_jax.gan.losses.LOSS_KINDS`.
      gp_weight: WGAN-GP weight ``lambda`` (0 disables).
      r1_weight: R1 weight ``gamma`` (adds ``gamma / 2 * E||grad_x D(x)||^2``; 0 disables).
      num_classes: class-conditional players (``batch['label']`` to both; fakes use the real batch's
        labels), or None.
      pack_size: PacGAN packing degree ``m`` (D sees ``m`` examples at once; 1 disables).
      n_critic: discriminator updates per generator update.
      precision: both players' compute dtype (:class:`gen_jax.precision.Policy`; logits and losses are
        float32).
    """

    generator: nn.Module
    discriminator: nn.Module
    latent_dim: int
    loss: str = "non_saturating"
    gp_weight: float = 0.0
    r1_weight: float = 0.0
    num_classes: int | None = None
    pack_size: int = 1
    n_critic: int = 1
    precision: Policy = Policy()

    def __post_init__(self):
        if self.loss not in L.LOSS_KINDS:
            raise ValueError(f"loss must be one of {L.LOSS_KINDS}, got {self.loss!r}")
        if self.gp_weight < 0 or self.r1_weight < 0:
            raise ValueError(f"gp_weight and r1_weight must be >= 0, got {self.gp_weight!r}, {self.r1_weight!r}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim!r}")
        if self.pack_size < 1:
            raise ValueError(f"pack_size must be >= 1, got {self.pack_size!r}")
        if self.num_classes is not None and self.pack_size > 1:
            raise ValueError("packing (pack_size > 1) cannot be combined with class conditioning")
        if self.n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {self.n_critic!r}")

    def init(self, key: jax.Array, batch: dict) -> tuple[dict, dict]:
        """Both players' parameters (D sees ``pack_size`` examples packed along the last axis)."""
        shape = tuple(batch["x"].shape[1:])
        d_shape = shape[:-1] + (shape[-1] * self.pack_size,)
        g_params, d_params, d_stats = init_gan(self.generator, self.discriminator, key, latent_dim=self.latent_dim,
                                               data_shape=d_shape, num_classes=self.num_classes)
        return {"g": g_params, "d": d_params}, {"g": {}, "d": {} if d_stats is None else {"batch_stats": d_stats}}

    def discriminate(self, d_params, d_state: dict, x, labels, update_stats: bool = False):
        """D logits ``[B]`` and D's (possibly updated) model state."""
        variables = {"params": d_params, **d_state}
        if update_stats and d_state:
            logits, mutated = self.precision.apply(self.discriminator, variables, x, labels, update_stats=True,
                                                   mutable=list(d_state))
            return logits, dict(mutated)
        return self.precision.apply(self.discriminator, variables, x, labels, update_stats=False), d_state

    def _labels(self, batch: dict):
        if self.num_classes is None:
            return None
        if "label" not in batch:
            raise ValueError("a class-conditional GAN (num_classes set) needs batch['label']")
        return batch["label"]

    def d_loss(self, params: dict, model_state: dict, batch: dict, rng: jax.Array):
        """The discriminator's loss and metrics (``d_real_prob``, ``d_fake_prob``, ``d_value_nats``,
        ``d_logit_gap``, ``d_gp``, ``d_r1``); D's statistics are updated on the real + fake batch."""
        real = preprocess(batch["x"])  # [B, ...]
        labels = self._labels(batch)
        z_key, gp_key = jax.random.split(rng)
        fake = jax.lax.stop_gradient(
            generate(self.generator, params["g"], z_key, real.shape[0], latent_dim=self.latent_dim, labels=labels,
                     precision=self.precision))
        real_in, fake_in = pack(real, self.pack_size), pack(fake, self.pack_size)
        n = real_in.shape[0]
        both_labels = None if labels is None else jnp.concatenate([labels, labels])
        logits, d_state = self.discriminate(params["d"], model_state["d"], jnp.concatenate([real_in, fake_in]),
                                            both_labels, True)
        real_logits, fake_logits = logits[:n], logits[n:]
        real_terms, fake_terms = L.discriminator_loss_terms(real_logits, fake_logits, self.loss)
        per_example = real_terms + fake_terms  # [B / pack_size]

        def critic(x):
            return self.discriminate(params["d"], d_state, x, labels, False)[0]

        metrics = {
            "d_real_prob": jnp.mean(jax.nn.sigmoid(real_logits)),
            "d_fake_prob": jnp.mean(jax.nn.sigmoid(fake_logits)),
            "d_value_nats": L.value_function(real_logits, fake_logits),
            "d_logit_gap": jnp.mean(real_logits) - jnp.mean(fake_logits),
        }
        if self.gp_weight > 0:
            gp = L.gradient_penalty(critic, real_in, fake_in, gp_key)
            per_example = per_example + self.gp_weight * gp
            metrics["d_gp"] = jnp.mean(gp)
        if self.r1_weight > 0:
            r1 = L.r1_penalty(critic, real_in)
            per_example = per_example + 0.5 * self.r1_weight * r1
            metrics["d_r1"] = jnp.mean(r1)
        return jnp.mean(per_example), (metrics, {**model_state, "d": d_state})

    def g_loss(self, params: dict, model_state: dict, batch: dict, rng: jax.Array):
        """The generator's loss (D's statistics read, not updated) and ``g_fake_prob``."""
        labels = self._labels(batch)
        fake = generate(self.generator, params["g"], rng, batch["x"].shape[0], latent_dim=self.latent_dim,
                        labels=labels, precision=self.precision)
        fake_logits, _ = self.discriminate(params["d"], model_state["d"], pack(fake, self.pack_size), labels, False)
        g_loss = jnp.mean(L.generator_loss_terms(fake_logits, self.loss))
        return g_loss, ({"g_fake_prob": jnp.mean(jax.nn.sigmoid(fake_logits))}, model_state)

    def sample(self, params: dict, key: jax.Array, n: int) -> jax.Array:
        """``n`` samples ``G(z)`` (random labels for a conditional G); images mapped to [0, 1]."""
        label_key, z_key = jax.random.split(key)
        labels = None if self.num_classes is None else jax.random.randint(label_key, (n,), 0, self.num_classes)
        x = generate(self.generator, params["g"], z_key, n, latent_dim=self.latent_dim, labels=labels,
                     precision=self.precision)
        return jnp.clip((x + 1.0) * 0.5, 0.0, 1.0) if x.ndim == 4 else x
