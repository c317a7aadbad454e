"""VAEs from a config: ``build(config, data) -> Experiment``.

Config fields read here (the rest is the common schema of experiments/configs/common.py):

* ``model``: ``arch`` ('mlp' | 'conv'), ``latent_dim``, ``hidden`` (mlp widths), ``features`` and
  ``dense``, ``upsample`` and ``downsample`` (conv), ``activation`` (a name in ``ACTIVATIONS``).
* ``objective``: ``likelihood`` ('bernoulli' | 'gaussian' | 'gaussian_fixed' | 'logistic'), ``kl``
  ('analytic' | 'mc'), ``beta``, ``iwae_k`` (K > 1 trains on the IWAE bound), ``binarize``
  ('dynamic' | None).
* ``eval.density_k``: K of the toy log-density heat map.

Samples: toy data are drawn from p_theta(x|z), z ~ N(0, I); images are the likelihood's mean mapped to
[0, 1]. The test log-likelihood is the ``importance_nll`` evaluator's.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.configs.common import optim_kwargs
from experiments.tasks.base import DataSpec, Experiment, precision_policy
from gen_jax import vae
from gen_jax.train import TrainState, make_optimizer

ACTIVATIONS = {"relu": nn.relu, "elu": nn.elu, "gelu": nn.gelu, "tanh": jnp.tanh,
               "softplus": nn.softplus, "swish": nn.swish}


def build_vae(config, data: DataSpec, likelihood: vae.Likelihood) -> vae.VAE:
    """The VAE networks of ``config.model`` for data of shape ``data.shape``."""
    m = config.model
    name = m.get("activation", "relu")
    if name not in ACTIVATIONS:
        raise ValueError(f"config.model.activation={name!r}; expected one of {sorted(ACTIVATIONS)}.")
    act = ACTIVATIONS[name]
    if m.arch == "mlp":
        return vae.mlp_vae(data.shape, latent_dim=m.latent_dim, num_params=likelihood.num_params,
                           hidden=tuple(m.hidden), activation=act, precision=precision_policy(config))
    if m.arch == "conv":
        if data.kind != "image":
            raise ValueError(f"config.model.arch='conv' needs image data, got {data.name!r}.")
        return vae.conv_vae(data.shape, latent_dim=m.latent_dim, num_params=likelihood.num_params,
                            features=tuple(m.features), dense=m.dense, activation=act,
                            upsample=m.get("upsample", "transpose"), downsample=m.get("downsample", "strided"),
                            precision=precision_policy(config))
    raise ValueError(f"config.model.arch={m.arch!r}; expected 'mlp' or 'conv'.")


def build(config, data: DataSpec) -> Experiment:
    obj = config.objective
    likelihood = vae.get_likelihood(obj.likelihood)
    binarize = obj.get("binarize", None)
    if data.is_vector:
        if isinstance(likelihood, (vae.Bernoulli, vae.DiscretizedLogistic)):
            raise ValueError(f"config.objective.likelihood={obj.likelihood!r} does not fit real-valued "
                             f"vector data; use 'gaussian' or 'gaussian_fixed'.")
        binarize = None
    model = vae.VariationalAutoencoder(build_vae(config, data, likelihood), likelihood=likelihood, kl=obj.kl,
                                       beta=obj.beta, iwae_k=obj.iwae_k, binarize=binarize)

    def init_state(key: jax.Array) -> TrainState:
        init_key, state_key = jax.random.split(key)
        params, model_state = model.init(init_key, {"x": jnp.zeros((1, *data.shape), jnp.float32)})
        return TrainState.create(params=params, tx=make_optimizer(**optim_kwargs(config)), key=state_key,
                                 ema_decay=config.optim.ema_decay, model_state=model_state,
                                 loss_scale=precision_policy(config).loss_scale())

    log_density = None
    if data.kind == "toy":
        density_k, points_per_chunk = int(config.eval.get("density_k", 256)), 1024

        @jax.jit
        def log_density(params, x):
            n = x.shape[0]
            xs = jnp.pad(x, ((0, (-n) % points_per_chunk), (0, 0))).reshape(-1, points_per_chunk, x.shape[1])
            keys = jax.random.split(jax.random.key(0), xs.shape[0])
            return jax.lax.map(lambda a: model.log_prob(params, a[0], a[1], num_samples=density_k,
                                                        chunk_size=min(64, density_k)), (xs, keys)).reshape(-1)[:n]

    return Experiment(model=model, init_state=init_state, log_density=log_density,
                      sample_options={"mean": not data.is_vector})
