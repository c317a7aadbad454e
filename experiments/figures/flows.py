"""Flow pictures: ``temperature_grid`` (images) and ``latents`` (toy)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments.tasks.base import Context
from gen_jax import viz


def temperature_grid(ctx: Context, key: jax.Array, outdir: str) -> list[str]:
    """A grid of samples of seed 0, one row per temperature in ``eval.temperatures`` (the same noise in
    every row, scaled by T)."""
    temperatures = tuple(float(t) for t in ctx.options.get("temperatures", (0.0, 0.5, 0.7, 0.8, 0.9, 1.0)))
    per_row, model = 10, ctx.model

    @jax.jit
    def grid(params, key):
        samples = jax.vmap(lambda t: model.sample(params, key, per_row, t))(jnp.asarray(temperatures))
        return samples.reshape(-1, *ctx.data.shape)  # [T * per_row, H, W, C]; row r has temperature r

    path = os.path.join(outdir, "temperature_grid.png")
    return [viz.save_image_grid(np.asarray(jax.device_get(grid(ctx.params[0], key))), path, nrow=per_row)]


def latents(ctx: Context, key: jax.Array, outdir: str) -> list[str]:
    """Toy data x and their latents f(x) (seed 0) next to z ~ N(0, I)."""
    k_data, k_z = jax.random.split(key)
    x = ctx.data.toy.sample(k_data, 2000)
    z = np.asarray(jax.jit(ctx.model.latents)(ctx.params[0], x))
    cols = [{"title": "data x", "samples": np.asarray(x)},
            {"title": "latents f(x)", "samples": z},
            {"title": "z ~ N(0, I)", "samples": np.asarray(jax.random.normal(k_z, (2000, 2)))}]
    lo, hi = ctx.data.toy.bounds
    bound = max(4.0, abs(lo), abs(hi))
    return [viz.save_panel(cols, os.path.join(outdir, "latents.png"), (-bound, bound),
                           title="a trained flow maps the data to N(0, I)")]
