"""GAN experiments: ``build(config, data) -> Task`` for the generic runner (experiments/run.py).

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
* ``num_seeds``: K > 1 trains K independently initialised GANs at once (vmap over a leading replica
  axis; they share the data batches); ``sample`` then returns ``[K, n, ...]`` and ``evaluate``
  reports ``<metric>_mean``, ``<metric>_std`` and ``<metric>_min`` over the seeds.
* ``eval``: ``num_samples`` (toy: samples per seed for mode coverage, 2500 in the PacGAN protocol);
  images: ``fd_num_samples`` (generated images for the Frechet distance), ``classifier_steps``,
  ``classifier_batch_size``, ``classifier_seed``, ``classifier_path`` (optional ``.msgpack`` file
  caching the trained feature classifier across runs).

Evaluation. Toy mixtures: mode coverage (modes captured, % high-quality samples within 3 std,
KL of the mode histogram to uniform) on ``eval.num_samples`` samples per seed, plus the Frechet
distance between samples and held-out data in the plane. Images: the Frechet distance between the
test images and ``eval.fd_num_samples`` generated images in the feature space of a small classifier
trained here on the training split (:mod:`gen_jax.metrics.classifier`; no downloaded weights), the
classifier's test accuracy, and the classifier's "inception score" ``exp E_x KL(p(y|x) || p(y))``.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from experiments.configs.common import optim_kwargs
from experiments.tasks.base import DataSpec, Task
from gen_jax import gan, viz
from gen_jax.data import images as image_data
from gen_jax.metrics import classifier as clf
from gen_jax.metrics.frechet import frechet_distance_from_features
from gen_jax.metrics.modes import mode_coverage
from gen_jax.train import TrainState, TwoPlayerState, make_optimizer, make_two_player_step


def build_models(config, data: DataSpec):
    """``(generator, discriminator)`` of ``config.model`` for data of shape ``data.shape``."""
    m = config.model
    pack_size = int(config.objective.get("pack_size", 1))
    num_classes = None
    if m.get("conditional", False):
        if data.kind != "image" or not data.num_classes:
            raise ValueError(f"config.model.conditional=True needs labelled image data, got {data.name!r}.")
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


def _discriminator_optim(config) -> config_dict.ConfigDict:
    """``config.optim`` with the fields that ``config.d_optim`` sets (not None) replaced."""
    merged = config.optim.to_dict()
    for k, v in config.get("d_optim", config_dict.ConfigDict()).items():
        if v is not None:
            merged[k] = v
    return config_dict.ConfigDict(merged)


def _d_input_shape(data: DataSpec, pack_size: int) -> tuple[int, ...]:
    return data.shape[:-1] + (data.shape[-1] * pack_size,)


def _summarise(per_seed: list[dict]) -> dict:
    """One seed: the metrics as they are; K seeds: ``<k>_mean``, ``<k>_std``, ``<k>_min``."""
    if len(per_seed) == 1:
        return dict(per_seed[0])
    out = {}
    for k in per_seed[0]:
        v = np.asarray([s[k] for s in per_seed], np.float64)
        out.update({f"{k}_mean": float(v.mean()), f"{k}_std": float(v.std()), f"{k}_min": float(v.min())})
    out["num_seeds"] = float(len(per_seed))
    return out


def build(config, data: DataSpec) -> Task:
    """The GAN :class:`Task` of ``config`` (see the module docstring for the fields read)."""
    m, obj, ev = config.model, config.objective, config.eval
    num_seeds = int(config.num_seeds)
    replicas = num_seeds > 1
    latent_dim = int(m.latent_dim)
    pack_size = int(obj.get("pack_size", 1))
    conditional = bool(m.get("conditional", False))
    g, d = build_models(config, data)
    d_loss_fn, g_loss_fn = gan.make_gan_losses(
        g, d, latent_dim=latent_dim, loss=obj.loss, gp_weight=float(obj.get("gp_weight", 0.0)),
        r1_weight=float(obj.get("r1_weight", 0.0)), conditional=conditional, pack_size=pack_size)
    train_step = make_two_player_step(d_loss_fn, g_loss_fn, n_critic=int(obj.get("n_critic", 1)),
                                      replicas=replicas)
    d_optim = _discriminator_optim(config)

    def init_one(key: jax.Array) -> TwoPlayerState:
        init_key, g_key, d_key = jax.random.split(key, 3)
        g_params, d_params, d_stats = gan.init_gan(
            g, d, init_key, latent_dim=latent_dim, data_shape=_d_input_shape(data, pack_size),
            num_classes=data.num_classes if conditional else None)
        g_state = TrainState.create(params=g_params, tx=make_optimizer(**optim_kwargs(config)), key=g_key,
                                    ema_decay=config.optim.ema_decay)
        d_state = TrainState.create(params=d_params, tx=make_optimizer(**optim_kwargs(config, d_optim)),
                                    key=d_key, batch_stats=d_stats)
        return TwoPlayerState(g=g_state, d=d_state)

    def init(key: jax.Array) -> TwoPlayerState:
        if replicas:
            return jax.jit(jax.vmap(init_one))(jax.random.split(key, num_seeds))
        return jax.jit(init_one)(key)

    def _labels(key, n):
        return jax.random.randint(key, (n,), 0, data.num_classes) if conditional else None

    @functools.partial(jax.jit, static_argnums=2)
    def _sample(g_params, key, n):
        label_key, z_key = jax.random.split(key)
        x = gan.generate(g, g_params, z_key, n, latent_dim=latent_dim, labels=_labels(label_key, n))
        return x if data.kind == "toy" else jnp.clip((x + 1.0) * 0.5, 0.0, 1.0)  # images in [0, 1]

    def sample(state: TwoPlayerState, key: jax.Array, n: int) -> jax.Array:
        """``[n, *shape]`` samples from the generator (its EMA when enabled); ``[K, n, ...]`` for K seeds."""
        params = state.g.eval_params
        if replicas:
            return jax.vmap(lambda p, k: _sample(p, k, n))(params, jax.random.split(key, num_seeds))
        return _sample(params, key, n)

    def _per_seed_samples(state, key, n) -> list[np.ndarray]:
        x = np.asarray(jax.device_get(sample(state, key, n)))
        return list(x) if replicas else [x]

    # ---- evaluation: toy ----
    def evaluate_toy(state, key, batches: Iterable[dict]) -> dict:
        held_out = np.concatenate([np.asarray(b["x"]) for b in batches])
        dist = data.toy
        out = []
        for x in _per_seed_samples(state, key, int(ev.num_samples)):
            scores = {}
            if getattr(dist, "means", None) is not None and getattr(dist, "std", None) is not None:
                cov = mode_coverage(x, dist.means, dist.std)
                scores = {k: cov[k] for k in ("modes", "hq_percent", "kl_to_uniform")}
            scores["frechet_2d"] = frechet_distance_from_features(x, held_out) if np.all(np.isfinite(x)) \
                else float("inf")
            out.append(scores)
        return _summarise(out)

    # ---- evaluation: images ----
    cache: dict[str, Any] = {}
    if data.kind == "image" and ev.get("classifier_path", None) and os.path.exists(ev.classifier_path):
        # Checked now, before training: a classifier of another dataset is refused, not reused.
        cache["params"] = clf.load_classifier(ev.classifier_path, dataset=data.name,
                                              num_classes=data.num_classes, image_shape=data.shape)

    def _classifier():
        if "params" in cache:
            return cache["params"]
        path = ev.get("classifier_path", None)
        key = jax.random.key(int(ev.get("classifier_seed", 0)))
        x_train, y_train = image_data.load_tfds(data.name, "train", config.data.get("data_dir"))
        params = clf.train_classifier(x_train, y_train, key=key, num_classes=data.num_classes,
                                      num_steps=int(ev.classifier_steps), batch_size=int(ev.classifier_batch_size))
        if path:
            clf.save_classifier(path, params, dataset=data.name, steps=int(ev.classifier_steps),
                                seed=int(ev.get("classifier_seed", 0)))
        cache["params"] = params
        return params

    def evaluate_images(state, key, batches: Iterable[dict]) -> dict:
        params = _classifier()
        xs, ys = [], []
        for b in batches:
            xs.append(np.asarray(b["x"]))
            ys.append(np.asarray(b["label"]))
        x_test, y_test = np.concatenate(xs), np.concatenate(ys)
        if "test_features" not in cache or cache["test_features"][0] != len(x_test):
            cache["test_features"] = (len(x_test), clf.features(params, x_test))
        test_features = cache["test_features"][1]
        accuracy = clf.accuracy(params, x_test, y_test)
        n = int(ev.fd_num_samples)
        out = []
        for x in _per_seed_samples(state, key, n):
            feats = clf.features(params, x)
            probs = np.asarray(jax.nn.softmax(jnp.asarray(clf.logits(params, x)), axis=-1), np.float64)
            marginal = probs.mean(0)
            kl = np.sum(probs * (np.log(probs + 1e-12) - np.log(marginal + 1e-12)[None]), axis=1)
            out.append({"frechet_distance": frechet_distance_from_features(feats, test_features),
                        "classifier_score": float(np.exp(kl.mean())),
                        "classes_covered": float(np.sum(np.bincount(probs.argmax(1), minlength=probs.shape[1])
                                                        >= 0.01 * n))})
        result = _summarise(out)
        result["classifier_test_accuracy"] = accuracy
        # The same metric for the test set itself against half of itself: a floor for the distance.
        half = len(test_features) // 2
        if half >= 2:
            result["frechet_distance_test_halves"] = frechet_distance_from_features(test_features[:half],
                                                                                    test_features[half:])
        return result

    def evaluate(state, key, batches: Iterable[dict]) -> dict:
        return evaluate_toy(state, key, batches) if data.kind == "toy" else evaluate_images(state, key, batches)

    # ---- figures ----
    def figures(state, key: jax.Array, outdir: str) -> list[str]:
        if data.kind == "toy":
            return _toy_figures(state, key, outdir)
        return _image_figures(state, key, outdir)

    def _toy_figures(state, key, outdir):
        real = np.asarray(data.toy.sample(jax.random.key(1), 2000))
        seeds = _per_seed_samples(state, key, int(ev.num_samples))[:6]
        cols = [{"title": f"data ({data.name})", "samples": real}]
        for i, x in enumerate(seeds):
            sub = ""
            if getattr(data.toy, "std", None) is not None:
                cov = mode_coverage(x, data.toy.means, data.toy.std)
                sub = f"{cov['modes']:.0f} modes, {cov['hq_percent']:.1f}% HQ"
            cols.append({"title": f"G seed {i}", "samples": x, "subtitle": sub})
        paths = [viz.save_panel(cols, os.path.join(outdir, "gan_seeds.png"), data.toy.bounds,
                                title="GAN samples per seed")]
        if pack_size == 1:
            d_params = jax.tree.map(lambda a: a[0], state.d.params) if replicas else state.d.params
            stats = state.d.batch_stats
            if stats is not None and replicas:
                stats = jax.tree.map(lambda a: a[0], stats)
            variables = {"params": d_params} | ({"batch_stats": stats} if stats is not None else {})
            d_prob = jax.jit(lambda v, x: jax.nn.sigmoid(d.apply(v, x)))
            paths.append(_save_discriminator_map(lambda x: d_prob(variables, jnp.asarray(x)), real,
                                                 seeds[0], data.toy.bounds,
                                                 os.path.join(outdir, "gan_discriminator.png")))
        return paths

    @jax.jit
    def _interpolate(g_params, key):
        z0, z1 = jax.random.normal(key, (2, 8, latent_dim))
        t = jnp.linspace(0.0, 1.0, 10)[None, :, None]  # [1, 10, 1]
        # Spherical-ish path: linear interpolation rescaled to keep |z| typical.
        z = (1 - t) * z0[:, None] + t * z1[:, None]  # [8, 10, latent]
        z = z / jnp.sqrt((1 - t) ** 2 + t**2)
        z = z.reshape(80, latent_dim)
        labels = jnp.repeat(jnp.arange(8) % data.num_classes, 10) if conditional else None
        return jnp.clip((g.apply({"params": g_params}, z, labels) + 1.0) * 0.5, 0.0, 1.0)

    def _image_figures(state, key, outdir):
        params = jax.tree.map(lambda a: a[0], state.g.eval_params) if replicas else state.g.eval_params
        paths = [viz.save_image_grid(np.asarray(_interpolate(params, key)),
                                     os.path.join(outdir, "gan_interpolation.png"), nrow=10)]
        if replicas:
            grids = _per_seed_samples(state, key, 16)[:8]
            paths.append(viz.save_image_grid(np.concatenate(grids), os.path.join(outdir, "gan_seeds.png"),
                                             nrow=16))
        return paths

    return Task(init=init, train_step=train_step, sample=sample, evaluate=evaluate, figures=figures)


def _save_discriminator_map(d_prob, real, fake, bounds, path: str) -> str:
    """Heat map of D(x) = sigmoid(logit) with data (black) and samples (blue): at the game's
    equilibrium D = 1/2 wherever the data are."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = np.linspace(bounds[0], bounds[1], 150, dtype=np.float32)
    pts = np.stack(np.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    prob = np.asarray(d_prob(pts)).reshape(len(xs), len(xs))
    fig, ax = plt.subplots(figsize=(5, 4.3))
    im = ax.imshow(prob, origin="lower", extent=(*bounds, *bounds), cmap="RdBu_r", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="D(x)")
    ax.scatter(real[:500, 0], real[:500, 1], s=2, c="k", label="data")
    ax.scatter(fake[:500, 0], fake[:500, 1], s=2, c="tab:cyan", label="G(z)")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title("discriminator D(x) (seed 0)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
