"""Diffusion pictures: ``ddpm_vs_ddim`` (images: the two samplers side by side and the reverse trajectory;
toy: the reverse process and both samplers)."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments.tasks.base import Context
from gen_jax import viz


def ddpm_vs_ddim(ctx: Context, key: jax.Array, outdir: str) -> list[str]:
    """DDPM (all T steps) vs DDIM (``eval.ddim_steps``) samples from the same key (seed 0), and the DDPM
    reverse trajectory from t = T to 0: images as a grid (per sample a row of x_t and below it a row of
    the predicted x_0), toy data as scatter plots."""
    model, params = ctx.model, ctx.params[0]
    options = {k: v for k, v in ctx.sample_options.items() if k != "sampler"}
    T = model.schedule.num_timesteps
    if not model.is_image:
        n = int(ctx.options.get("figure_points", 2000))
        x_ddpm, traj = model.reverse_process(params, key, n, sampler="ddpm", trajectory=True, **options)
        x_ddim = model.reverse_process(params, key, n, sampler="ddim", **options)
        return [_toy_figure(ctx, traj, x_ddpm, x_ddim, T, int(ctx.options.ddim_steps), outdir)]
    n = int(ctx.options.get("figure_images", 16))
    ddpm_x, traj = model.reverse_process(params, key, n, sampler="ddpm", trajectory=True, **options)
    ddim_x = model.reverse_process(params, key, n, sampler="ddim", **options)
    grid = jnp.concatenate([model.to_data(ddpm_x), model.to_data(ddim_x)])
    paths = [viz.save_image_grid(np.asarray(grid), os.path.join(outdir, "ddpm_vs_ddim.png"), nrow=n)]
    frames = np.unique(np.linspace(0, T - 1, 10).round().astype(int))  # scan index; t = T - index
    rows = min(n, 8)
    xt = np.asarray(model.to_data(traj["x"][frames, :rows]))  # [F, rows, H, W, C]
    x0 = np.asarray(model.to_data(traj["x0_pred"][frames, :rows]))
    seq = np.stack([xt, x0], axis=2).transpose(1, 2, 0, 3, 4, 5)  # [rows, 2 (x_t, x0_hat), F, ...]
    paths.append(viz.save_image_grid(seq.reshape(-1, *ctx.data.shape), os.path.join(outdir, "trajectory.png"),
                                     nrow=len(frames)))
    return paths


def _toy_figure(ctx: Context, traj, x_ddpm, x_ddim, T: int, ddim_steps: int, outdir: str) -> str:
    """Row 1: x_t along the DDPM reverse process (t = T .. 0); row 2: the data, DDPM and DDIM samples."""
    plt = viz.pyplot()
    data = ctx.data
    n = x_ddpm.shape[0]
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
    return viz.save_figure(fig, os.path.join(outdir, "diffusion_trajectory.png"))


def log_snr(ctx: Context, key: jax.Array, outdir: str) -> list[str]:
    """A continuous-time model's log-SNR schedule lambda(t) after training (seed 0) against its initial one,
    and the weight -lambda'(t) / 2 of its diffusion loss (where the learned shape puts the samples of t)."""
    from gen_jax.diffusion import log_snr_and_derivative

    model, params = ctx.model, ctx.params[0]
    t = jnp.linspace(0.0, 1.0, 401)
    curve = jax.jit(functools.partial(log_snr_and_derivative, model.schedule))  # op by op: seconds for the MLP
    lam, dlam = curve(model._schedule_vars(params["schedule"]), t)
    lam0, dlam0 = curve(jax.jit(model.schedule.init)(key, t), t)
    plt = viz.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    for ax, (a, b), title in zip(axes, [(lam, lam0), (-0.5 * dlam, -0.5 * dlam0)],
                                 ["log-SNR lambda(t)", "diffusion-loss weight -lambda'(t) / 2"]):
        ax.plot(np.asarray(t), np.asarray(a), label="trained")
        ax.plot(np.asarray(t), np.asarray(b), "--", label="initial")
        ax.set_xlabel("t")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    return [viz.save_figure(fig, os.path.join(outdir, "log_snr.png"))]
