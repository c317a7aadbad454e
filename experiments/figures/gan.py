"""GAN pictures: ``gan_seeds`` (every seed's samples), ``gan_discriminator`` (toy: the map of D(x)) and
``gan_interpolation`` (images: paths in latent space)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments.tasks.base import Context
from gen_jax import viz
from gen_jax.metrics import mode_coverage


def gan_seeds(ctx: Context, key: jax.Array, outdir: str) -> list[str]:
    """Toy: the data and up to 6 seeds' samples (``eval.num_samples`` each) with their mode coverage.
    Images (several seeds only): 16 samples of each of up to 8 seeds, a row each."""
    if ctx.data.kind == "image":
        if ctx.num_seeds == 1:
            return []
        grids = ctx.sample(key, 16)[:8]
        return [viz.save_image_grid(np.concatenate(grids), os.path.join(outdir, "gan_seeds.png"), nrow=16)]
    toy = ctx.data.toy
    cols = [{"title": f"data ({ctx.data.name})", "samples": np.asarray(toy.sample(jax.random.key(1), 2000))}]
    for i, x in enumerate(ctx.sample(key, int(ctx.options.num_samples))[:6]):
        sub = ""
        if getattr(toy, "std", None) is not None:
            cov = mode_coverage(x, toy.means, toy.std)
            sub = f"{cov['modes']:.0f} modes, {cov['hq_percent']:.1f}% HQ"
        cols.append({"title": f"G seed {i}", "samples": x, "subtitle": sub})
    return [viz.save_panel(cols, os.path.join(outdir, "gan_seeds.png"), toy.bounds, title="GAN samples per seed")]


def gan_discriminator(ctx: Context, key: jax.Array, outdir: str) -> list[str]:
    """Heat map of D(x) = sigmoid(logit) of seed 0 with data (black) and samples (blue): at the game's
    equilibrium D = 1/2 wherever the data are. Toy data without packing only."""
    model = ctx.model
    if ctx.data.kind != "toy" or model.pack_size != 1:
        return []
    real = np.asarray(ctx.data.toy.sample(jax.random.key(1), 2000))
    fake = ctx.sample(key, int(ctx.options.num_samples))[0]
    d_params, d_state = ctx.params[0]["d"], ctx.model_state[0]["d"]
    d_prob = jax.jit(lambda x: jax.nn.sigmoid(model.discriminate(d_params, d_state, x, None)[0]))
    bounds = ctx.data.toy.bounds
    plt = viz.pyplot()
    xs = np.linspace(bounds[0], bounds[1], 150, dtype=np.float32)
    pts = np.stack(np.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    prob = np.asarray(d_prob(jnp.asarray(pts))).reshape(len(xs), len(xs))
    fig, ax = plt.subplots(figsize=(5, 4.3))
    im = ax.imshow(prob, origin="lower", extent=(*bounds, *bounds), cmap="RdBu_r", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="D(x)")
    ax.scatter(real[:500, 0], real[:500, 1], s=2, c="k", label="data")
    ax.scatter(fake[:500, 0], fake[:500, 1], s=2, c="tab:cyan", label="G(z)")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title("discriminator D(x) (seed 0)")
    return [viz.save_figure(fig, os.path.join(outdir, "gan_discriminator.png"))]


def gan_interpolation(ctx: Context, key: jax.Array, outdir: str) -> list[str]:
    """Images: 8 rows of 10 samples of seed 0 along a path between two latents (the linear path rescaled
    to keep |z| typical)."""
    model = ctx.model
    if ctx.data.kind != "image":
        return []

    @jax.jit
    def interpolate(g_params, key):
        z0, z1 = jax.random.normal(key, (2, 8, model.latent_dim))
        t = jnp.linspace(0.0, 1.0, 10)[None, :, None]  # [1, 10, 1]
        z = (1 - t) * z0[:, None] + t * z1[:, None]  # [8, 10, latent]
        z = (z / jnp.sqrt((1 - t) ** 2 + t**2)).reshape(80, model.latent_dim)
        labels = jnp.repeat(jnp.arange(8) % model.num_classes, 10) if model.num_classes else None
        return jnp.clip((model.generator.apply({"params": g_params}, z, labels) + 1.0) * 0.5, 0.0, 1.0)

    return [viz.save_image_grid(np.asarray(interpolate(ctx.params[0]["g"], key)),
                                os.path.join(outdir, "gan_interpolation.png"), nrow=10)]
