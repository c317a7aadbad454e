"""Generative adversarial networks: the seed's game ``min_G max_D V(D, G)``.

``V(D, G) = E_{x~p_data}[log D(x)] + E_{z~p_z}[log(1 - D(G(z)))]`` with ``D(x) = sigmoid(logit)``.

* :mod:`gen_jax.gan.losses`: :func:`value_function`, per-kind discriminator/generator losses
  (minimax, non-saturating, hinge, Wasserstein, least squares), :func:`gradient_penalty`,
  :func:`r1_penalty`.
* :mod:`gen_jax.gan.models`: MLP and DCGAN generators/discriminators (class conditioning, spectral
  norm), :func:`init_gan`.
* :mod:`gen_jax.gan.objective`: :class:`GAN`, the two-player model (:mod:`gen_jax.model`), for
  :func:`gen_jax.train.make_two_player_step`.
* :mod:`gen_jax.gan.sampling`: :func:`sample_latent`, :func:`generate`.
"""

from gen_jax.gan.losses import (
    LOSS_KINDS,
    discriminator_loss,
    discriminator_loss_terms,
    generator_loss,
    generator_loss_terms,
    gradient_penalty,
    log_d,
    log_one_minus_d,
    r1_penalty,
    value_function,
)
from gen_jax.gan.models import (
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
    init_gan,
)
from gen_jax.gan.objective import GAN, pack, preprocess
from gen_jax.gan.sampling import generate, sample_latent

__all__ = [
    "GAN",
    "LOSS_KINDS",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "MLPDiscriminator",
    "MLPGenerator",
    "discriminator_loss",
    "discriminator_loss_terms",
    "generate",
    "generator_loss",
    "generator_loss_terms",
    "gradient_penalty",
    "init_gan",
    "log_d",
    "log_one_minus_d",
    "pack",
    "preprocess",
    "r1_penalty",
    "sample_latent",
    "value_function",
]
