"""Normalizing flows from a config: ``build(config, data) -> Experiment``.

The objective is the seed's exact log-likelihood, log p(x) = log p_z(f(x)) + log|det df/dx|
(:class:`gen_jax.flows.NormalizingFlow`; 8-bit images: uniform dequantization, loss in bits/dim).

Config fields read here (the rest is the common schema of experiments/configs/common.py):

* ``model.arch``: toy data ``'realnvp'`` | ``'nsf'`` | ``'maf'``; images ``'realnvp'`` (multi-scale)
  | ``'glow'``. The other ``model`` fields are the keyword arguments of that model class
  (``ARCHS`` lists them; e.g. Glow's ``num_levels``, ``num_steps``, ``hidden``).
* ``model.init_batch``: examples of the data-dependent ActNorm initialisation (default 512): toy
  data draw them from the distribution, images take the first ``init_batch`` training images.
* ``model.remat``: rematerialise the coupling conditioners (None | 'full' | 'dots':
  :data:`gen_jax.nn.REMAT_POLICIES`; MAF's MADE is not).
* ``objective.num_bits``: bits per value of image data (default 8).
* ``eval.temperature``: temperature of the samples the run shows (default 1.0).
"""

from __future__ import annotations

import jax
import numpy as np

from experiments.configs.common import optim_kwargs
from experiments.tasks.base import DataSpec, Experiment, precision_policy
from gen_jax import flows
from gen_jax.data.preprocess import uniform_dequantize
from gen_jax.train import TrainState, make_optimizer

# ('vector' | 'image', arch) -> (model class, the keyword arguments it takes from config.model)
ARCHS: dict[tuple[str, str], tuple[type, tuple[str, ...]]] = {
    ("vector", "realnvp"): (flows.RealNVP, ("num_layers", "hidden", "max_log_scale", "actnorm")),
    ("vector", "nsf"): (flows.NSF, ("num_layers", "hidden", "num_bins", "bound", "lu_linear")),
    ("vector", "maf"): (flows.MAF, ("num_layers", "hidden", "max_log_scale", "actnorm")),
    ("image", "realnvp"): (flows.MultiScaleRealNVP, ("num_scales", "hidden", "num_res_blocks", "max_log_scale",
                                                     "actnorm", "preprocess", "alpha")),
    ("image", "glow"): (flows.Glow, ("num_levels", "num_steps", "hidden", "lu", "additive", "learn_split_prior",
                                     "max_log_scale", "preprocess", "alpha")),
}
_TASK_FIELDS = ("arch", "init_batch", "remat")


def build_flow(config, data: DataSpec) -> flows.FlowModel:
    """The flow module of ``config.model`` for data shaped like ``data.shape``."""
    m = config.model.to_dict()
    arch = m.get("arch")
    layout = "vector" if data.is_vector else "image"
    if (layout, arch) not in ARCHS:
        options = sorted(a for k, a in ARCHS if k == layout)
        raise ValueError(f"config.model.arch={arch!r} for {layout} data; expected one of {options}.")
    cls, allowed = ARCHS[layout, arch]
    unknown = sorted(set(m) - set(allowed) - set(_TASK_FIELDS))
    if unknown:
        raise ValueError(f"config.model has fields {unknown} that {cls.__name__} does not take; "
                         f"expected some of {list(allowed)}.")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in m.items() if k in allowed}
    kwargs.update(precision=precision_policy(config), remat=m.get("remat", None))
    if data.is_vector:
        return cls(dim=int(np.prod(data.shape)), **kwargs)
    return cls(image_shape=tuple(data.shape), **kwargs)


def build(config, data: DataSpec) -> Experiment:
    model = flows.NormalizingFlow(build_flow(config, data), num_bits=int(config.objective.get("num_bits", 8)))
    init_batch = int(config.model.get("init_batch", 512))
    if data.kind != "toy":  # the first examples of the training split
        first = jax.numpy.asarray(data.train.read(np.arange(min(init_batch, data.num_train)))["x"])

    def init_state(key: jax.Array) -> TrainState:
        data_key, init_key, state_key = jax.random.split(key, 3)
        x = (data.toy.sample(data_key, init_batch) if data.kind == "toy" else first if data.kind == "points"
             else uniform_dequantize(data_key, first, model.num_bits))
        params, model_state = model.init(init_key, {"x": x})  # ActNorm: data-dependent init
        return TrainState.create(params=params, tx=make_optimizer(**optim_kwargs(config)), key=state_key,
                                 ema_decay=config.optim.ema_decay, model_state=model_state,
                                 loss_scale=precision_policy(config).loss_scale())

    log_density = None
    if data.kind == "toy":
        log_density = jax.jit(model.log_prob)
    return Experiment(model=model, init_state=init_state, log_density=log_density,
                      sample_options={"temperature": float(config.eval.get("temperature", 1.0))})
