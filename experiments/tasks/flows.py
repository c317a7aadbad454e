"""Normalizing-flow experiments: ``build(config, data) -> Task`` for the generic runner.

The objective is the seed's exact log-likelihood, log p(x) = log p_z(f(x)) + log|det df/dx|,
maximised by ``gen_jax.flows.make_flow_loss`` (8-bit images: uniform dequantization, loss in bits/dim).

Config fields read here (the rest is the common schema of experiments/configs/common.py):

* ``model.arch``: toy data ``'realnvp'`` | ``'nsf'`` | ``'maf'``; images ``'realnvp'`` (multi-scale)
  | ``'glow'``. The other ``model`` fields are the keyword arguments of that model class
  (``ARCHS`` lists them; e.g. Glow's ``num_levels``, ``num_steps``, ``hidden``).
* ``model.init_batch``: examples used for the data-dependent ActNorm initialisation (default 512).
* ``objective.num_bits``: bits per value of image data (default 8).
* ``eval.temperatures``: temperatures of the sample grid figure (images); ``eval.temperature``:
  temperature of the samples the runner saves (default 1.0).

``init`` runs ``model.init`` on a first batch of training data (toy: samples of the distribution;
images: the first ``init_batch`` training images, dequantized), which sets every ActNorm so that its
outputs have zero mean and unit variance on that batch. ``evaluate`` returns the test ``nll_nats``
(images: of the dequantized data in [0, 256)^D, a bound on the discrete NLL) and, for images,
``bits_per_dim``. ``config.num_seeds > 1`` trains that many seeds at once (vmap).
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs.common import optim_kwargs
from experiments.tasks.base import DataSpec, Task
from gen_jax import flows, viz
from gen_jax.train import TrainState, make_optimizer, make_train_step

# (data kind, arch) -> (model class, the keyword arguments it takes from config.model)
ARCHS: dict[tuple[str, str], tuple[type, tuple[str, ...]]] = {
    ("toy", "realnvp"): (flows.RealNVP, ("num_layers", "hidden", "max_log_scale", "actnorm")),
    ("toy", "nsf"): (flows.NSF, ("num_layers", "hidden", "num_bins", "bound", "lu_linear")),
    ("toy", "maf"): (flows.MAF, ("num_layers", "hidden", "max_log_scale", "actnorm")),
    ("image", "realnvp"): (flows.MultiScaleRealNVP, ("num_scales", "hidden", "num_res_blocks", "max_log_scale",
                                                     "actnorm", "preprocess", "alpha")),
    ("image", "glow"): (flows.Glow, ("num_levels", "num_steps", "hidden", "lu", "additive", "learn_split_prior",
                                     "max_log_scale", "preprocess", "alpha")),
}
_TASK_FIELDS = ("arch", "init_batch")


def build_model(config, data: DataSpec) -> flows.FlowModel:
    """The flow of ``config.model`` for data shaped like ``data.shape``."""
    m = config.model.to_dict()
    arch = m.get("arch")
    if (data.kind, arch) not in ARCHS:
        options = sorted(a for k, a in ARCHS if k == data.kind)
        raise ValueError(f"config.model.arch={arch!r} for {data.kind} data; expected one of {options}.")
    cls, allowed = ARCHS[data.kind, arch]
    unknown = sorted(set(m) - set(allowed) - set(_TASK_FIELDS))
    if unknown:
        raise ValueError(f"config.model has fields {unknown} that {cls.__name__} does not take; "
                         f"expected some of {list(allowed)}.")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in m.items() if k in allowed}
    if data.kind == "toy":
        return cls(dim=int(np.prod(data.shape)), **kwargs)
    return cls(image_shape=tuple(data.shape), **kwargs)


def _first_images(config, data: DataSpec, n: int) -> np.ndarray:
    """The first ``n`` training images (uint8), for the data-dependent initialisation."""
    from gen_jax.data import images as image_data  # tfds is imported only for image runs

    x, _ = image_data.load_tfds(data.name, f"train[:{n}]", config.data.get("data_dir"))
    return x[:n]


def build(config, data: DataSpec) -> Task:
    """The flow :class:`Task` of ``config`` (module docstring lists the fields read).

    With ``config.num_seeds = S > 1`` the state carries a leading seed axis; ``sample`` returns
    ``[S, n, ...]``, ``evaluate`` the mean over seeds (plus ``<metric>_std``), and
    ``log_density``/``figures`` use the first seed.
    """
    num_seeds = int(config.num_seeds)
    if num_seeds < 1:
        raise ValueError(f"config.num_seeds={num_seeds}; expected an integer >= 1.")
    replicas = num_seeds > 1
    per_seed = jax.vmap if replicas else (lambda f, **_: f)  # noqa: E731
    model = build_model(config, data)
    num_bits = int(config.objective.get("num_bits", 8))
    loss_fn = flows.make_flow_loss(model, num_bits=num_bits)
    train_step = make_train_step(loss_fn, replicas=replicas)
    init_batch = int(config.model.get("init_batch", 512))
    temperature = float(config.eval.get("temperature", 1.0))
    cache: dict[str, Any] = {}

    def first_batch(key: jax.Array) -> jax.Array:
        if data.kind == "toy":
            return data.toy.sample(key, init_batch)
        if "x" not in cache:
            cache["x"] = jnp.asarray(_first_images(config, data, init_batch))
        return flows.dequantize(key, cache["x"], num_bits)

    def init_one(key: jax.Array) -> TrainState:
        data_key, init_key, state_key = jax.random.split(key, 3)
        params = model.init(init_key, first_batch(data_key))["params"]  # ActNorm: data-dependent init
        tx = make_optimizer(**optim_kwargs(config))
        return TrainState.create(params=params, tx=tx, key=state_key, ema_decay=config.optim.ema_decay)

    def init(key: jax.Array) -> TrainState:
        if data.kind == "image":
            first_batch(key)  # load the images outside of jit
        if replicas:
            return jax.jit(jax.vmap(init_one))(jax.random.split(key, num_seeds))
        return jax.jit(init_one)(key)

    def first_seed(params):
        return jax.tree.map(lambda a: a[0], params) if replicas else params

    def _sample_one(params, key, n, t):
        x = model.apply({"params": params}, key, n, t, method="sample")
        return jnp.clip(x, 0.0, 1.0) if data.kind == "image" else x

    _sample = jax.jit(per_seed(_sample_one, in_axes=(0, 0, None, None)) if replicas else _sample_one,
                      static_argnums=2)

    def sample(state, key: jax.Array, n: int) -> jax.Array:
        keys = jax.random.split(key, num_seeds) if replicas else key
        return _sample(state.eval_params, keys, n, temperature)

    def _eval_one(params, x, key):
        return jnp.sum(flows.flow_nll(model, params, x, key, num_bits=num_bits))

    _eval_batch = jax.jit(per_seed(_eval_one, in_axes=(0, None, None)) if replicas else _eval_one)

    def evaluate(state, key: jax.Array, batches: Iterable[dict]) -> dict:
        total, count = 0.0, 0
        for i, batch in enumerate(batches):
            x = jnp.asarray(batch["x"])
            total = total + np.asarray(jax.device_get(_eval_batch(state.eval_params, x, jax.random.fold_in(key, i))),
                                       np.float64)
            count += x.shape[0]
        if not count:
            raise ValueError("evaluate received no evaluation batches.")
        per = {"nll_nats": total / count}  # per seed: a scalar, or [S] with replicas
        if data.kind == "image":
            per["bits_per_dim"] = per["nll_nats"] / (float(np.prod(data.shape)) * np.log(2.0))
        result = {k: float(np.mean(v)) for k, v in per.items()}
        if replicas:
            result.update({f"{k}_std": float(np.std(v)) for k, v in per.items()})
        result["num_examples"] = float(count)
        return result

    @jax.jit
    def _log_density(params, x):
        return model.apply({"params": params}, x, method="log_prob")

    def log_density(state, x: jax.Array) -> jax.Array:
        return _log_density(first_seed(state.eval_params), jnp.asarray(x, jnp.float32))

    temperatures = tuple(float(t) for t in config.eval.get("temperatures", (0.0, 0.5, 0.7, 0.8, 0.9, 1.0)))
    per_row = 10

    @jax.jit
    def _temperature_grid(params, key):
        samples = jax.vmap(lambda t: _sample_one(params, key, per_row, t))(jnp.asarray(temperatures))
        return samples.reshape(-1, *data.shape)  # [T * per_row, H, W, C]; row r has temperature r

    @jax.jit
    def _latents(params, x):
        return model.apply({"params": params}, x, method="forward")[0]

    def figures(state, key: jax.Array, outdir: str) -> list[str]:
        """Images: a grid of samples, one row per temperature in ``eval.temperatures`` (same noise
        in every row, scaled by T). Toy: data x and their latents f(x) next to z ~ N(0, I)."""
        params = first_seed(state.eval_params)
        if data.kind == "image":
            grid = np.asarray(jax.device_get(_temperature_grid(params, key)))
            path = os.path.join(outdir, "temperature_grid.png")
            return [viz.save_image_grid(grid, path, nrow=per_row)]
        k_data, k_z = jax.random.split(key)
        x = data.toy.sample(k_data, 2000)
        z = np.asarray(_latents(params, x))
        cols = [{"title": "data x", "samples": np.asarray(x)},
                {"title": "latents f(x)", "samples": z},
                {"title": "z ~ N(0, I)", "samples": np.asarray(jax.random.normal(k_z, (2000, 2)))}]
        lo, hi = data.toy.bounds
        bound = max(4.0, abs(lo), abs(hi))
        return [viz.save_panel(cols, os.path.join(outdir, "latents.png"), (-bound, bound),
                               title="a trained flow maps the data to N(0, I)")]

    return Task(init=init, train_step=train_step, sample=sample, evaluate=evaluate,
                log_density=log_density if data.kind == "toy" else None, figures=figures)
