"""Diffusion experiments: ``build(config, data) -> Task`` for the generic runner (experiments/run.py).

Config fields read here (the rest is the common schema of experiments/configs/common.py):

* ``model``: ``arch`` ('mlp' | 'unet'); mlp: ``hidden``, ``num_blocks``, ``time_dim``; unet: ``ch``,
  ``ch_mult``, ``num_res_blocks``, ``attn_resolutions``, ``dropout``, ``num_heads``, ``norm_groups``;
  both: ``class_conditional`` (images: condition on labels; classifier-free guidance when sampling).
* ``objective``: the noise schedule ``schedule`` ('linear' | 'cosine' | 'sigmoid'),
  ``num_timesteps`` (T), ``beta_start``/``beta_end`` (linear), ``cosine_s`` (cosine); the loss
  ``parameterization`` ('eps' | 'x0' | 'v'), ``weighting`` ('simple' | 'vlb' | 'min_snr'),
  ``min_snr_gamma``, ``variance`` (reverse variance of the 'vlb' weights: 'large' | 'small'),
  ``cond_drop_prob`` (label dropout for guidance), ``random_flip`` (images: horizontal flips).
* ``eval``: ``sampler`` ('ddpm' | 'ddim', used by ``sample``), ``ddpm_variance`` ('small' | 'large'),
  ``ddim_steps``, ``ddim_eta``, ``ddim_spacing`` ('uniform' | 'quadratic'), ``clip_x0`` (clip the
  predicted x_0 to [-1, 1]; images), ``guidance_scale`` (class-conditional models; None: plain
  conditional sampling), ``bound_examples`` (eval examples for the variational bound; 0 skips it),
  ``bound_batch_size``, ``bound_t_chunk`` (timesteps per network call in the bound),
  ``bound_variance`` ('large' as in Ho et al.'s reported bounds, or 'small'), ``figure_images``.

Samples use the EMA parameters (``state.eval_params``); images come back in [0, 1]. ``evaluate``
returns the held-out training objective ``loss`` (L_simple with the defaults; one random t per
example, dropout off) over all eval batches and, on the first ``eval.bound_examples`` of them, the full variational bound (all T terms):
``nll_nats`` (an upper bound on -log p(x)), for images ``bits_per_dim`` and its parts
``prior_bpd`` (L_T), ``decoder_bpd`` (L_0), ``diffusion_bpd`` (L_1..L_{T-1}), and the latter split by
decades of t (``kl_t2_10_bpd``, ``kl_t11_100_bpd``, ...; for toy data all in nats), and the standard
error of the bound over the examples (``bits_per_dim_se``; toy: ``nll_nats_se``). The bound costs T
network evaluations per example (T=1000: slow on CPU; keep ``bound_examples`` small there).
``figures`` draws DDPM vs DDIM samples from the same noise and the reverse (denoising) trajectory.
"""

from __future__ import annotations

import os
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs.common import optim_kwargs
from experiments.tasks.base import DataSpec, Task
from gen_jax import diffusion, metrics, viz
from gen_jax.train import TrainState, make_optimizer, make_train_step


def build_schedule(objective) -> diffusion.NoiseSchedule:
    """The noise schedule of ``config.objective``."""
    kind, T = objective.schedule, int(objective.num_timesteps)
    if kind == "linear":
        return diffusion.NoiseSchedule.linear(T, objective.beta_start, objective.beta_end)
    if kind == "cosine":
        return diffusion.NoiseSchedule.cosine(T, objective.get("cosine_s", 0.008))
    if kind == "sigmoid":
        return diffusion.NoiseSchedule.sigmoid(T)
    raise ValueError(f"config.objective.schedule={kind!r}; expected 'linear', 'cosine' or 'sigmoid'.")


def build_denoiser(config, data: DataSpec):
    """The denoiser of ``config.model`` for data of shape ``data.shape``."""
    m = config.model
    num_classes = None
    if m.get("class_conditional", False):
        if data.kind != "image" or not data.num_classes:
            raise ValueError(f"config.model.class_conditional=True needs labelled image data, got {data.name!r}.")
        num_classes = data.num_classes
    if m.arch == "mlp":
        if len(data.shape) != 1:
            raise ValueError(f"config.model.arch='mlp' needs vector data, got shape {data.shape}.")
        return diffusion.MLPDenoiser(hidden=m.hidden, num_blocks=m.num_blocks, time_dim=m.time_dim,
                                     num_classes=num_classes)
    if m.arch == "unet":
        if data.kind != "image":
            raise ValueError(f"config.model.arch='unet' needs image data, got {data.name!r}.")
        return diffusion.UNet(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                              attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                              num_heads=m.get("num_heads", 1), norm_groups=m.norm_groups,
                              num_classes=num_classes)
    raise ValueError(f"config.model.arch={m.arch!r}; expected 'mlp' or 'unet'.")


def build(config, data: DataSpec) -> Task:
    """The diffusion :class:`Task` of ``config`` (see the module docstring for the fields read)."""
    if int(config.num_seeds) != 1:
        raise ValueError(f"config.num_seeds={config.num_seeds}; the diffusion task trains one seed (use 1).")
    obj, ev = config.objective, config.eval
    schedule = build_schedule(obj)
    denoiser = build_denoiser(config, data)
    num_classes = getattr(denoiser, "num_classes", None)
    is_image = data.kind == "image"
    loss_kw = dict(parameterization=obj.parameterization, weighting=obj.weighting,
                   min_snr_gamma=obj.min_snr_gamma, variance=obj.variance)
    loss_fn = diffusion.make_diffusion_loss(denoiser, schedule, cond_drop_prob=obj.cond_drop_prob,
                                            random_flip=bool(obj.get("random_flip", False)) and is_image,
                                            **loss_kw)
    eval_loss_fn = jax.jit(diffusion.make_diffusion_loss(denoiser, schedule, train=False, **loss_kw))
    train_step = make_train_step(loss_fn)
    apply_fn = diffusion.make_denoise_fn(denoiser)  # built once: the samplers take it as a static arg
    param = obj.parameterization
    clip = 1.0 if (is_image and ev.clip_x0) else None
    guidance = ev.get("guidance_scale", None)
    if ev.sampler not in ("ddpm", "ddim"):
        raise ValueError(f"config.eval.sampler={ev.sampler!r}; expected 'ddpm' or 'ddim'.")

    def init(key: jax.Array) -> TrainState:
        init_key, state_key = jax.random.split(key)
        # Initialise from an 'rbg' key derived from init_key: the same parameters for the same key,
        # and XLA compiles a U-Net's many initialisers ~3x faster than with threefry on CPU.
        init_key = jax.random.wrap_key_data(jax.random.bits(init_key, (4,), jnp.uint32), impl="rbg")
        x = jnp.zeros((1, *data.shape), jnp.float32)
        label = jnp.zeros((1,), jnp.int32) if num_classes else None
        params = jax.jit(denoiser.init)(init_key, x, jnp.ones((1,), jnp.int32), label)["params"]
        tx = make_optimizer(**optim_kwargs(config))
        return TrainState.create(params=params, tx=tx, key=state_key, ema_decay=config.optim.ema_decay)

    def _labels(n: int):
        return None if num_classes is None else jnp.arange(n, dtype=jnp.int32) % num_classes

    def draw(params, key, n: int, sampler: str, trajectory: bool = False):
        """Samples in model space ([-1, 1] for images), optionally with the reverse trajectory."""
        common = dict(label=_labels(n), guidance_scale=None if num_classes is None else guidance,
                      parameterization=param, clip_x0=clip, return_trajectory=trajectory)
        shape = (n, *data.shape)
        if sampler == "ddpm":
            return diffusion.ddpm_sample(apply_fn, params, schedule, key, shape,
                                         variance=ev.ddpm_variance, **common)
        return diffusion.ddim_sample(apply_fn, params, schedule, key, shape, num_steps=int(ev.ddim_steps),
                                     eta=float(ev.ddim_eta), spacing=ev.ddim_spacing, **common)

    def to_data(x: jax.Array) -> jax.Array:
        return jnp.clip((x + 1.0) * 0.5, 0.0, 1.0) if is_image else x

    def sample(state, key: jax.Array, n: int) -> jax.Array:
        return to_data(draw(state.eval_params, key, int(n), ev.sampler))

    bound_examples = int(ev.get("bound_examples", 0))
    bound_bs = int(ev.get("bound_batch_size", 100))

    @jax.jit
    def _bound_sums(params, x, label, valid, key):
        out = diffusion.variational_bound(apply_fn, params, schedule, x, key, label=label, parameterization=param,
                                          variance=ev.bound_variance, t_chunk=int(ev.bound_t_chunk))
        keys = ("nll_nats", "bits_per_dim", "prior_nats", "decoder_nats", "diffusion_nats")
        sums = {k: jnp.sum(jnp.where(valid, out[k], 0.0)) for k in keys}
        sums["terms_nats"] = jnp.sum(jnp.where(valid[:, None], out["terms_nats"], 0.0), axis=0)  # [T]
        sums["nll_sq"] = jnp.sum(jnp.where(valid, jnp.square(out["nll_nats"]), 0.0))
        return sums

    def evaluate(state, key: jax.Array, batches: Iterable[dict]) -> dict:
        params = state.eval_params
        loss_key, bound_key = jax.random.split(key)
        loss_sum, count = 0.0, 0
        held: list[dict] = []  # the first `bound_examples` examples, for the bound
        held_n = 0
        for i, batch in enumerate(batches):
            b = {k: jnp.asarray(v) for k, v in batch.items() if k in ("x", "label")}
            loss, _ = eval_loss_fn(params, b, jax.random.fold_in(loss_key, i))
            n = int(b["x"].shape[0])
            loss_sum += float(loss) * n
            count += n
            if held_n < bound_examples:
                take = min(n, bound_examples - held_n)
                held.append({k: np.asarray(v)[:take] for k, v in batch.items() if k in ("x", "label")})
                held_n += take
        if not count:
            raise ValueError("evaluate received no evaluation batches.")
        result = {"loss": loss_sum / count}
        if held_n:
            result.update(_bound(params, held, held_n, bound_key))
        return result

    def _bound(params, held: list[dict], n: int, key: jax.Array) -> dict:
        x = np.concatenate([h["x"] for h in held])
        labels = np.concatenate([h["label"] for h in held]) if num_classes else None
        bs = min(bound_bs, n)
        pad = (-n) % bs
        x = np.concatenate([x, np.repeat(x[:1], pad, 0)])
        if labels is not None:
            labels = np.concatenate([labels, np.repeat(labels[:1], pad, 0)])
        valid = np.arange(len(x)) < n
        sums: dict = {}
        for j in range(len(x) // bs):
            sl = slice(j * bs, (j + 1) * bs)
            out = _bound_sums(params, jnp.asarray(x[sl]), None if labels is None else jnp.asarray(labels[sl]),
                              jnp.asarray(valid[sl]), jax.random.fold_in(key, j))
            for k, v in jax.device_get(out).items():
                sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
        mean = {k: v / n for k, v in sums.items()}
        res = {"nll_nats": float(mean["nll_nats"]), "bound_examples": float(n)}
        se = float(metrics.standard_error(sums["nll_nats"], sums["nll_sq"], n)) if n > 1 else None
        parts = {"prior": mean["prior_nats"], "decoder": mean["decoder_nats"], "diffusion": mean["diffusion_nats"]}
        parts.update(_kl_by_decade(mean["terms_nats"]))
        if is_image:
            to_bpd = 1.0 / (float(np.prod(data.shape)) * np.log(2.0))
            res["bits_per_dim"] = float(mean["bits_per_dim"])
            if se is not None:
                res["bits_per_dim_se"] = se * to_bpd
            res.update({f"{k}_bpd": float(v) * to_bpd for k, v in parts.items()})
        else:
            if se is not None:
                res["nll_nats_se"] = se
            res.update({f"{k}_nats": float(v) for k, v in parts.items()})
        return res

    def figures(state, key: jax.Array, outdir: str) -> list[str]:
        """DDPM (all T steps, top row) vs DDIM (``eval.ddim_steps``, bottom row) samples from the same
        key, and the DDPM reverse trajectory from t = T (left) to 0 (right): for images, per sample a
        row of x_t and below it a row of the predicted x_0."""
        params = state.eval_params
        os.makedirs(outdir, exist_ok=True)
        if not is_image:
            return [_toy_figure(draw, params, key, data, int(ev.get("figure_points", 2000)), outdir,
                                schedule.num_timesteps, int(ev.ddim_steps))]
        n = int(ev.get("figure_images", 16))
        ddpm_x, traj = draw(params, key, n, "ddpm", trajectory=True)
        ddim_x = draw(params, key, n, "ddim")
        grid = jnp.concatenate([to_data(ddpm_x), to_data(ddim_x)])
        paths = [viz.save_image_grid(np.asarray(grid), os.path.join(outdir, "ddpm_vs_ddim.png"), nrow=n)]
        T = schedule.num_timesteps
        frames = np.unique(np.linspace(0, T - 1, 10).round().astype(int))  # scan index; t = T - index
        rows = min(n, 8)
        xt = np.asarray(to_data(traj["x"][frames, :rows]))  # [F, rows, H, W, C]
        x0 = np.asarray(to_data(traj["x0_pred"][frames, :rows]))
        seq = np.stack([xt, x0], axis=2).transpose(1, 2, 0, 3, 4, 5)  # [rows, 2 (x_t, x0_hat), F, ...]
        paths.append(viz.save_image_grid(seq.reshape(-1, *data.shape), os.path.join(outdir, "trajectory.png"),
                                         nrow=len(frames)))
        return paths

    return Task(init=init, train_step=train_step, sample=sample, evaluate=evaluate, figures=figures)


def _kl_by_decade(terms: np.ndarray) -> dict[str, float]:
    """Sums of the KL terms L_{t-1}, t >= 2, of a per-timestep bound ``terms`` [T] (entry t - 1 is
    the term at timestep t) over decades of t: {'kl_t2_10': t = 2..10, 'kl_t11_100': t = 11..100, ...}.
    Shows where the bits of ``diffusion`` (their total) go."""
    T = len(terms)
    out, lo, hi = {}, 2, 10
    while lo <= T:
        out[f"kl_t{lo}_{min(hi, T)}"] = float(np.sum(terms[lo - 1:min(hi, T)]))
        lo, hi = hi + 1, hi * 10
    return out


def _toy_figure(draw, params, key, data: DataSpec, n: int, outdir: str, T: int, ddim_steps: int) -> str:
    """Row 1: x_t along the DDPM reverse process (t = T .. 0) and the data; row 2: DDPM vs DDIM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_ddpm, traj = draw(params, key, n, "ddpm", trajectory=True)
    x_ddim = draw(params, key, n, "ddim")
    steps = [0, T // 2, (3 * T) // 4, (9 * T) // 10, T - 1]  # scan index i holds x_{T-1-i}
    xs = [np.asarray(traj["x"][i]) for i in steps]
    titles = [f"x_{T - 1 - i}" for i in steps]
    real = np.asarray(data.toy.sample(jax.random.key(1), n))
    lo, hi = data.toy.bounds
    fig, axes = plt.subplots(2, len(steps), figsize=(3.0 * len(steps), 6.2))
    for ax, pts, title in zip(axes[0], xs, titles):
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.5, linewidths=0)
        ax.set_title(f"DDPM {title}", fontsize=9)
    row2 = [(real, f"data ({data.name})"), (np.asarray(x_ddpm), f"DDPM, {T} steps"),
            (np.asarray(x_ddim), f"DDIM, {ddim_steps} steps")]
    for ax, (pts, title) in zip(axes[1], row2):
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.5, linewidths=0, color="black" if "data" in title else None)
        ax.set_title(title, fontsize=9)
    for ax in axes[1, len(row2):]:
        ax.axis("off")
    for ax in axes.reshape(-1):
        ax.set_xlim(lo - 1, hi + 1)
        ax.set_ylim(lo - 1, hi + 1)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = os.path.join(outdir, "diffusion_trajectory.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

