"""GANs from a config: ``build(config, data) -> Experiment``.

Config fields read here (the rest is the common schema of experiments/configs/common.py):

* ``model``: ``arch`` ('mlp' | 'dcgan'), ``latent_dim``; mlp: ``g_hidden``, ``d_hidden``;
  dcgan: ``g_features``, ``d_features``, ``g_norm`` ('group' | 'none'), ``g_upsample``
  ('transpose' | 'subpixel'), ``d_downsample`` ('strided' | 'space_to_depth'); both: ``spectral_norm``
  (D), ``conditional`` (class-conditional G and projection D; images only).
* ``objective``: ``loss`` (a kind in :data:`gen_jax.gan.LOSS_KINDS`), ``gp_weight``, ``r1_weight``,
  ``n_critic``, ``pack_size`` (PacGAN degree).
* ``optim`` is the generator's optimizer (its ``ema_decay`` gives the generator EMA used for sampling
  and evaluation); ``d_optim`` (same fields, optional) overrides the discriminator's: a field left
  ``None`` inherits ``optim``'s value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from ml_collections import config_dict

from experiments.configs.common import optim_kwargs
from experiments.tasks.base import DataSpec, Experiment, precision_policy
from gen_jax import gan
from gen_jax.train import TwoPlayerState, make_optimizer


def build_players(config, data: DataSpec):
    """``(generator, discriminator)`` of ``config.model`` for data of shape ``data.shape``."""
    m = config.model
    pack_size = int(config.objective.get("pack_size", 1))
    num_classes = None
    if m.get("conditional", False):
        if not data.num_classes:
            raise ValueError(f"config.model.conditional=True needs labelled data, got {data.name!r}.")
        num_classes = data.num_classes
    if m.arch == "mlp":
        if len(data.shape) != 1:
            raise ValueError(f"config.model.arch='mlp' needs vector data, got shape {data.shape}.")
        g = gan.MLPGenerator(out_dim=data.shape[0], hidden=tuple(m.g_hidden), num_classes=num_classes)
        d = gan.MLPDiscriminator(hidden=tuple(m.d_hidden), num_classes=num_classes,
                                 spectral_norm=bool(m.spectral_norm))
        return g, d
    if m.arch == "dcgan":
        if data.kind != "image":
            raise ValueError(f"config.model.arch='dcgan' needs image data, got {data.name!r}.")
        h, w, c = data.shape
        g = gan.DCGANGenerator(data.shape, base_features=m.g_features, num_classes=num_classes,
                               norm=m.get("g_norm", "group"), upsample=m.get("g_upsample", "transpose"))
        d = gan.DCGANDiscriminator((h, w, c * pack_size), base_features=m.d_features, num_classes=num_classes,
                                   spectral_norm=bool(m.spectral_norm), downsample=m.get("d_downsample", "strided"))
        return g, d
    raise ValueError(f"config.model.arch={m.arch!r}; expected 'mlp' or 'dcgan'.")


def discriminator_optim(config) -> config_dict.ConfigDict:
    """``config.optim`` with the fields that ``config.d_optim`` sets (not None) replaced."""
    merged = config.optim.to_dict()
    for k, v in config.get("d_optim", config_dict.ConfigDict()).items():
        if v is not None:
            merged[k] = v
    return config_dict.ConfigDict(merged)


def build(config, data: DataSpec) -> Experiment:
    obj = config.objective
    g, d = build_players(config, data)
    model = gan.GAN(g, d, latent_dim=int(config.model.latent_dim), loss=obj.loss,
                    gp_weight=float(obj.get("gp_weight", 0.0)), r1_weight=float(obj.get("r1_weight", 0.0)),
                    num_classes=data.num_classes if config.model.get("conditional", False) else None,
                    pack_size=int(obj.get("pack_size", 1)), n_critic=int(obj.get("n_critic", 1)),
                    precision=precision_policy(config))
    d_optim = discriminator_optim(config)

    def init_state(key: jax.Array) -> TwoPlayerState:
        init_key, g_key, d_key = jax.random.split(key, 3)
        params, model_state = model.init(init_key, {"x": jnp.zeros((2, *data.shape), jnp.float32)})
        return TwoPlayerState.create(params=params, model_state=model_state, g_key=g_key, d_key=d_key,
                                     g_tx=make_optimizer(**optim_kwargs(config)),
                                     d_tx=make_optimizer(**optim_kwargs(config, d_optim)),
                                     ema_decay=config.optim.ema_decay,
                                     loss_scale=precision_policy(config).loss_scale())

    return Experiment(model=model, init_state=init_state)
