"""VAE experiments: ``build(config, data) -> Task`` for the generic runner (experiments/run.py).

Config fields read here (the rest is the common schema of experiments/configs/common.py):

* ``model``: ``arch`` ('mlp' | 'conv'), ``latent_dim``, ``hidden`` (mlp widths), ``features`` and
  ``dense``, ``upsample`` and ``downsample`` (conv), ``activation`` (a name in ``ACTIVATIONS``).
* ``objective``: ``likelihood`` ('bernoulli' | 'gaussian' | 'gaussian_fixed' | 'logistic'), ``kl``
  ('analytic' | 'mc'), ``beta``, ``iwae_k`` (K > 1 trains on the IWAE bound), ``binarize``
  ('dynamic' | None).
* ``eval``: ``iwae_k`` (K of the importance-sampled log p(x); 5000 is the MNIST standard),
  ``chunk_size`` (samples per chunk of that estimate; one device call each), ``rows_per_call``
  (test images per such call, 0: the whole eval batch; smaller calls stop sooner on SIGTERM),
  ``elbo_samples``, ``density_k`` (K of the toy log-density heat map), ``binarize_seed`` (the fixed
  binarisation of the test set).

Samples: toy data are drawn from p_theta(x|z), z ~ N(0, I); images are Bernoulli means (or the
likelihood's mean) mapped to [0, 1]. ``evaluate`` returns the test ``nll_nats`` (importance-sampled,
K = eval.iwae_k) with ``nll_nats_se``, its standard error over the test examples (how far a subset's
mean may sit from the whole test set's), ``bits_per_dim`` (images) and the test ELBO terms
(``elbo_nats``, ``recon_nats``, ``kl``). ``config.num_seeds > 1`` trains that many seeds at once (vmap).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs.common import optim_kwargs
from experiments.tasks.base import DataSpec, Task
from gen_jax import metrics, vae, viz
from gen_jax.train import TrainState, make_optimizer, make_train_step

ACTIVATIONS = {"relu": nn.relu, "elu": nn.elu, "gelu": nn.gelu, "tanh": jnp.tanh,
               "softplus": nn.softplus, "swish": nn.swish}


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"config.model.activation={name!r}; expected one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def build_model(config, data: DataSpec, likelihood: vae.Likelihood) -> vae.VAE:
    """The VAE of ``config.model`` for data of shape ``data.shape``."""
    m = config.model
    act = _activation(m.get("activation", "relu"))
    if m.arch == "mlp":
        return vae.mlp_vae(data.shape, latent_dim=m.latent_dim, num_params=likelihood.num_params,
                           hidden=tuple(m.hidden), activation=act)
    if m.arch == "conv":
        if data.kind != "image":
            raise ValueError(f"config.model.arch='conv' needs image data, got {data.name!r}.")
        return vae.conv_vae(data.shape, latent_dim=m.latent_dim, num_params=likelihood.num_params,
                            features=tuple(m.features), dense=m.dense, activation=act,
                            upsample=m.get("upsample", "transpose"), downsample=m.get("downsample", "strided"))
    raise ValueError(f"config.model.arch={m.arch!r}; expected 'mlp' or 'conv'.")


def _to_unit(x: jax.Array, likelihood: vae.Likelihood) -> jax.Array:
    """Likelihood data space -> [0, 1] for pictures."""
    if isinstance(likelihood, vae.DiscretizedLogistic):
        x = (x + 1.0) * 0.5
    return jnp.clip(x, 0.0, 1.0)


def build(config, data: DataSpec) -> Task:
    """The VAE :class:`Task` of ``config`` (see the module docstring for the fields read).

    With ``config.num_seeds = S > 1`` the state carries a leading seed axis and all S models train in
    one vmapped step on the same batches; ``sample`` returns ``[S, n, ...]``, ``evaluate`` the mean
    over seeds (plus ``<metric>_std``), and ``log_density``/``figures`` use the first seed.
    """
    num_seeds = int(config.num_seeds)
    if num_seeds < 1:
        raise ValueError(f"config.num_seeds={num_seeds}; expected an integer >= 1.")
    replicas = num_seeds > 1
    obj, ev = config.objective, config.eval
    likelihood = vae.get_likelihood(obj.likelihood)
    binarize = obj.get("binarize", None)
    if data.kind == "toy":
        if isinstance(likelihood, (vae.Bernoulli, vae.DiscretizedLogistic)):
            raise ValueError(f"config.objective.likelihood={obj.likelihood!r} does not fit real-valued toy "
                             f"data; use 'gaussian' or 'gaussian_fixed'.")
        binarize = None
    model = build_model(config, data, likelihood)
    loss_fn = vae.make_vae_loss(model, likelihood=likelihood, kl=obj.kl, beta=obj.beta,
                                iwae_k=obj.iwae_k, binarize=binarize)
    train_step = make_train_step(loss_fn, replicas=replicas)
    iwae_k, chunk = int(ev.iwae_k), int(ev.chunk_size)
    elbo_samples = int(ev.get("elbo_samples", 1))
    binarize_key = jax.random.key(int(ev.get("binarize_seed", 0)))
    per_seed = jax.vmap if replicas else (lambda f, **_: f)  # noqa: E731

    def init_one(key: jax.Array) -> TrainState:
        init_key, state_key = jax.random.split(key)
        params = jax.jit(model.init)(init_key, jnp.zeros((1, *data.shape), jnp.float32))["params"]
        tx = make_optimizer(**optim_kwargs(config))
        return TrainState.create(params=params, tx=tx, key=state_key, ema_decay=config.optim.ema_decay)

    def init(key: jax.Array) -> TrainState:
        if replicas:
            return jax.jit(jax.vmap(init_one))(jax.random.split(key, num_seeds))
        return init_one(key)

    def first_seed(params):
        return jax.tree.map(lambda a: a[0], params) if replicas else params

    def _sample_one(params, key, n):
        if data.kind == "toy":
            return vae.sample_prior(model, params, key, n, likelihood=likelihood, mean=False)
        return _to_unit(vae.sample_prior(model, params, key, n, likelihood=likelihood), likelihood)

    _sample = jax.jit(per_seed(_sample_one, in_axes=(0, 0, None)) if replicas else _sample_one,
                      static_argnums=2)

    def sample(state, key, n):
        keys = jax.random.split(key, num_seeds) if replicas else key
        return _sample(state.eval_params, keys, n)

    num_chunks = vae.num_importance_chunks(iwae_k, chunk)
    rows_per_call = int(ev.get("rows_per_call", 0))
    if rows_per_call < 0:
        raise ValueError(f"config.eval.rows_per_call={rows_per_call}; expected 0 (the whole eval batch) or a "
                         f"positive number of images per call.")

    def _eval_prepare(params, x_raw, key, batch_index):
        """A test batch's binarisation, posterior, IS key and ELBO sums (everything but the IS chunks)."""
        x = vae.preprocess(x_raw, jax.random.fold_in(binarize_key, batch_index), likelihood, binarize)
        is_key, elbo_key = jax.random.split(key)
        mean, log_var = model.apply({"params": params}, x, method="encode")
        terms = vae.elbo(vae.decoder_log_likelihood(model, params, likelihood, x), mean, log_var,
                         elbo_key, num_samples=elbo_samples, kl=obj.kl)
        sums = {"elbo": jnp.sum(terms.elbo), "recon": jnp.sum(terms.recon), "kl": jnp.sum(terms.kl)}
        return x, mean, log_var, is_key, sums

    def _is_chunk(params, x, mean, log_var, is_key, c, start, *, n):
        """One chunk of the IS estimate for rows start:start + n of the batch."""
        xr = jax.lax.dynamic_slice_in_dim(x, start, n)
        return vae.importance_chunk_logsumexp(vae.decoder_log_likelihood(model, params, likelihood, xr), mean,
                                              log_var, is_key, c, num_samples=iwae_k, chunk_size=chunk,
                                              rows=(start, n))

    def _log_px_sums(per_chunk):
        log_px = vae.combine_importance_chunks(per_chunk, iwae_k)  # [B] (or [S, B])
        return {"log_px": jnp.sum(log_px, axis=-1), "log_px_sq": jnp.sum(jnp.square(log_px), axis=-1)}

    _eval_prepare_jit = jax.jit(per_seed(_eval_prepare, in_axes=(0, None, None, None)))
    _log_px_sums_jit = jax.jit(_log_px_sums)

    @functools.cache
    def _is_chunk_jit(n):
        return jax.jit(per_seed(functools.partial(_is_chunk, n=n), in_axes=(0, 0, 0, 0, 0, None, None)))

    def evaluate(state, key: jax.Array, batches: Iterable[dict]) -> dict:
        """Test metrics. The K importance samples of each batch run as one device call per chunk of
        ``eval.chunk_size`` samples (and per ``eval.rows_per_call`` images, 0: the whole batch), each
        waited for, so that a long evaluation shows progress and stops promptly on SIGTERM; the
        estimate is the same as one whole-batch call (the same draws, up to float summation order)."""
        from tqdm.auto import tqdm

        totals, count = {}, 0
        for i, batch in enumerate(batches):
            b = len(batch["x"])
            x, mean, log_var, is_key, sums = _eval_prepare_jit(state.eval_params, jnp.asarray(batch["x"]),
                                                               jax.random.fold_in(key, i), i)
            step = rows_per_call if 0 < rows_per_call < b else b
            blocks = [(start, min(step, b - start)) for start in range(0, b, step)]
            per_chunk = []
            bar = tqdm(total=num_chunks * len(blocks), desc=f"eval batch {i}: log p(x), K={iwae_k}",
                       unit="call", leave=False, disable=None)
            with bar:
                for c in range(num_chunks):
                    parts = []
                    for start, n in blocks:
                        parts.append(jax.block_until_ready(
                            _is_chunk_jit(n)(state.eval_params, x, mean, log_var, is_key, c, start)))
                        bar.update()
                    per_chunk.append(jnp.concatenate(parts, axis=-1))
            out = jax.device_get({**sums, **_log_px_sums_jit(jnp.stack(per_chunk))})
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)
            count += b
        if not count:
            raise ValueError("evaluate received no evaluation batches.")
        m = {k: v / count for k, v in totals.items()}  # per seed: scalars, or [S] with replicas
        per = {"nll_nats": -m["log_px"], "elbo_nats": m["elbo"], "recon_nats": -m["recon"], "kl": m["kl"]}
        if data.kind == "image":
            per["bits_per_dim"] = per["nll_nats"] / (float(np.prod(data.shape)) * np.log(2.0))
        result = {k: float(np.mean(v)) for k, v in per.items()}
        if replicas:
            result.update({f"{k}_std": float(np.std(v)) for k, v in per.items()})
        if count > 1:  # standard error of the mean NLL over the test examples (sampling of the test set)
            result["nll_nats_se"] = float(np.mean(metrics.standard_error(totals["log_px"], totals["log_px_sq"],
                                                                         count)))
        result.update(iwae_k=float(iwae_k), num_examples=float(count))
        return result

    density_k = int(ev.get("density_k", 256))
    points_per_chunk = 1024

    @jax.jit
    def _log_density(params, x):
        n = x.shape[0]
        pad = (-n) % points_per_chunk
        xs = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, points_per_chunk, x.shape[1])
        keys = jax.random.split(jax.random.key(0), xs.shape[0])

        def one(args):
            xc, k = args
            return vae.vae_log_likelihood(model, params, xc, k, likelihood=likelihood,
                                          num_samples=density_k, chunk_size=min(64, density_k))

        return jax.lax.map(one, (xs, keys)).reshape(-1)[:n]

    def log_density(state, x: jax.Array) -> jax.Array:
        return _log_density(first_seed(state.eval_params), jnp.asarray(x, jnp.float32))

    cache: dict[str, Any] = {}

    def _test_images(n: int) -> np.ndarray:
        if "x" not in cache:
            from gen_jax.data import images as image_data
            cache["x"] = image_data.load_tfds(data.name, "test", config.data.get("data_dir"))[0][:64]
        return cache["x"][:n]

    @jax.jit
    def _posterior(params, x_raw):
        x = vae.preprocess(x_raw, jax.random.fold_in(binarize_key, 0), likelihood, binarize)
        mean, log_var = model.apply({"params": params}, x, method="encode")
        kl_per_dim = 0.5 * jnp.mean(jnp.exp(log_var) + jnp.square(mean) - 1.0 - log_var, axis=0)
        return x, mean, kl_per_dim

    @functools.partial(jax.jit, static_argnums=3)
    def _image_views(params, x, z0, dims):
        """Reconstructions, interpolations and traversals, each [N, H, W, C] in [0, 1]."""
        rec = vae.reconstruct(model, params, x, likelihood=likelihood)
        path = vae.interpolate(model, params, x[:8], x[8:16], 10, likelihood=likelihood)  # [8, 10, ...]
        grid = vae.latent_traversal(model, params, dims=dims, z0=z0, likelihood=likelihood)  # [R, 9, ...]
        unit = lambda a: _to_unit(a, likelihood).reshape(-1, *data.shape)  # noqa: E731
        return unit(jnp.concatenate([x, rec])), unit(path), unit(grid)

    def figures(state, key: jax.Array, outdir: str) -> list[str]:
        """Toy: data/reconstructions/latent grid. Images: reconstructions (top row: the binarised
        test images), interpolations between posterior means, and traversals of the 10 latent
        dimensions with the largest KL (most used), from the posterior mean of the first test image."""
        params = first_seed(state.eval_params)
        if data.kind == "toy":
            return [_toy_figure(model, params, likelihood, data, key, outdir)]
        x, mean, kl_per_dim = _posterior(params, jnp.asarray(_test_images(16)))
        dims = tuple(int(d) for d in np.argsort(-np.asarray(kl_per_dim))[:10])
        pairs, path, grid = jax.device_get(_image_views(params, x, mean[0], dims))
        return [viz.save_image_grid(pairs, os.path.join(outdir, "reconstructions.png"), nrow=16),
                viz.save_image_grid(path, os.path.join(outdir, "interpolation.png"), nrow=10),
                viz.save_image_grid(grid, os.path.join(outdir, "traversal.png"), nrow=9)]

    return Task(init=init, train_step=train_step, sample=sample, evaluate=evaluate,
                log_density=log_density if data.kind == "toy" else None, figures=figures)


def _toy_figure(model, params, likelihood, data: DataSpec, key: jax.Array, outdir: str) -> str:
    """Three panels: data and their reconstructions; the decoded latent grid (traversal) coloured by
    z; the posterior means of the data in latent space."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(data.toy.sample(key, 500))

    @jax.jit
    def views(params, x):
        mu, _ = model.apply({"params": params}, x, method="encode")
        return vae.reconstruct(model, params, x, likelihood=likelihood), mu

    rec, mu = (np.asarray(a) for a in views(params, jnp.asarray(x)))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
    ax = axes[0]
    ax.scatter(x[:, 0], x[:, 1], s=4, c="0.6", label="data")
    ax.scatter(rec[:, 0], rec[:, 1], s=4, c="C3", label="reconstruction (posterior mean)")
    ax.set_title("data and reconstructions")
    ax.legend(loc="upper right", fontsize=7)
    lo, hi = data.toy.bounds
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax = axes[1]
    if model.latent_dim == 2:
        g = np.linspace(-3, 3, 41, dtype=np.float32)
        z = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
        dec = np.asarray(jax.jit(lambda p, z: vae.decode_mean(model, p, z, likelihood))(params, z))
        ax.scatter(dec[:, 0], dec[:, 1], s=3, c=np.arctan2(z[:, 1], z[:, 0]), cmap="hsv")
        ax.set_title("decoder mean over a latent grid (colour: angle of z)")
    else:
        grid = np.asarray(jax.jit(lambda p: vae.latent_traversal(model, p, likelihood=likelihood))(params))
        for r in range(grid.shape[0]):
            ax.plot(grid[r, :, 0], grid[r, :, 1], "-o", ms=2, label=f"z_{r}")
        ax.legend(fontsize=7)
        ax.set_title("latent traversals (decoder means)")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax = axes[2]
    ax.scatter(mu[:, 0], mu[:, 1 % mu.shape[1]], s=4, c=np.arctan2(x[:, 1], x[:, 0]), cmap="hsv")
    ax.set_title("posterior means of data (colour: angle of x)")
    ax.set_xlim(-4, 4)
    ax.set_ylim(-4, 4)
    for a in axes:
        a.set_aspect("equal")
    fig.tight_layout()
    path = os.path.join(outdir, "vae_latent.png")
    os.makedirs(outdir, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
