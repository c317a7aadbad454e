"""gen_jax: GANs, VAEs, normalizing flows and diffusion models as pure Flax modules with compiled
train steps. Families are subpackages: ``gen_jax.gan``, ``gen_jax.vae``, ``gen_jax.flows``,
``gen_jax.diffusion``; the engine is ``gen_jax.train``; data is ``gen_jax.data``."""

__version__ = "0.1.0"
