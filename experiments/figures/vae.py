"""VAE pictures: ``reconstructions`` (images: reconstructions, interpolations, latent traversals) and
``vae_latent`` (toy: reconstructions, the decoded latent grid, the posterior means)."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments.tasks.base import Context
from gen_jax import vae, viz


def _first_test_images(ctx: Context, n: int) -> np.ndarray:
    """The first ``n`` test images, or an even number of them when the test batches hold fewer."""
    taken = []
    for b in ctx.batches():
        taken.append(np.asarray(b["x"][:n - sum(map(len, taken))]))
        if sum(map(len, taken)) == n:
            break
    x = np.concatenate(taken)
    return x[:len(x) // 2 * 2]


def reconstructions(ctx: Context, key: jax.Array, outdir: str) -> list[str]:
    """Reconstructions (top row: the binarised first test images), interpolations between posterior means,
    and traversals of the 10 latent dimensions with the largest KL (most used), from the posterior mean of
    the first test image; seed 0. Sixteen test images (fewer where the test batches hold fewer)."""
    model, params, shape = ctx.model, ctx.params[0], ctx.data.shape
    net, lik = model.vae, model.likelihood
    x_raw = _first_test_images(ctx, 16)
    binarize_key = jax.random.key(int(ctx.options.get("binarize_seed", 0)))

    @jax.jit
    def posterior(params, x_raw):
        x = model.preprocess(x_raw, jax.random.fold_in(binarize_key, 0))
        mean, log_var = net.apply({"params": params}, x, method="encode")
        return x, mean, 0.5 * jnp.mean(jnp.exp(log_var) + jnp.square(mean) - 1.0 - log_var, axis=0)

    @functools.partial(jax.jit, static_argnums=3)
    def views(params, x, z0, dims):
        rec = vae.reconstruct(net, params, x, likelihood=lik)
        half = len(x) // 2
        path = vae.interpolate(net, params, x[:half], x[half:], 10, likelihood=lik)  # [8, 10, ...]
        grid = vae.latent_traversal(net, params, dims=dims, z0=z0, likelihood=lik)  # [R, 9, ...]
        unit = lambda a: model.to_unit(a).reshape(-1, *shape)  # noqa: E731
        return unit(jnp.concatenate([x, rec])), unit(path), unit(grid)

    x, mean, kl_per_dim = posterior(params, jnp.asarray(x_raw))
    dims = tuple(int(d) for d in np.argsort(-np.asarray(kl_per_dim))[:10])
    pairs, path, grid = jax.device_get(views(params, x, mean[0], dims))
    return [viz.save_image_grid(pairs, os.path.join(outdir, "reconstructions.png"), nrow=len(x)),
            viz.save_image_grid(path, os.path.join(outdir, "interpolation.png"), nrow=10),
            viz.save_image_grid(grid, os.path.join(outdir, "traversal.png"), nrow=9)]


def vae_latent(ctx: Context, key: jax.Array, outdir: str) -> list[str]:
    """Toy data: data and reconstructions; the decoder mean over a latent grid (coloured by z); the
    posterior means of the data in latent space; seed 0."""
    plt = viz.pyplot()
    model, params, data = ctx.model, ctx.params[0], ctx.data
    net, lik = model.vae, model.likelihood
    x = np.asarray(data.toy.sample(key, 500))

    @jax.jit
    def views(params, x):
        mu, _ = net.apply({"params": params}, x, method="encode")
        return vae.reconstruct(net, params, x, likelihood=lik), mu

    rec, mu = (np.asarray(a) for a in views(params, jnp.asarray(x)))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
    ax = axes[0]
    ax.scatter(x[:, 0], x[:, 1], s=4, c="0.6", label="data")
    ax.scatter(rec[:, 0], rec[:, 1], s=4, c="C3", label="reconstruction (posterior mean)")
    ax.set_title("data and reconstructions")
    ax.legend(loc="upper right", fontsize=7)
    lo, hi = data.toy.bounds
    ax = axes[1]
    if net.latent_dim == 2:
        g = np.linspace(-3, 3, 41, dtype=np.float32)
        z = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
        dec = np.asarray(jax.jit(lambda p, z: vae.decode_mean(net, p, z, lik))(params, z))
        ax.scatter(dec[:, 0], dec[:, 1], s=3, c=np.arctan2(z[:, 1], z[:, 0]), cmap="hsv")
        ax.set_title("decoder mean over a latent grid (colour: angle of z)")
    else:
        grid = np.asarray(jax.jit(lambda p: vae.latent_traversal(net, p, likelihood=lik))(params))
        for r in range(grid.shape[0]):
            ax.plot(grid[r, :, 0], grid[r, :, 1], "-o", ms=2, label=f"z_{r}")
        ax.legend(fontsize=7)
        ax.set_title("latent traversals (decoder means)")
    for a in axes[:2]:
        a.set_xlim(lo, hi)
        a.set_ylim(lo, hi)
    ax = axes[2]
    ax.scatter(mu[:, 0], mu[:, 1 % mu.shape[1]], s=4, c=np.arctan2(x[:, 1], x[:, 0]), cmap="hsv")
    ax.set_title("posterior means of data (colour: angle of x)")
    ax.set_xlim(-4, 4)
    ax.set_ylim(-4, 4)
    for a in axes:
        a.set_aspect("equal")
    return [viz.save_figure(fig, os.path.join(outdir, "vae_latent.png"))]
