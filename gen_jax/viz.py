"""Pictures: sample grids, 2D scatter and density panels, training curves (PNG via matplotlib)."""

from __future__ import annotations

import math
import os
from typing import Callable, Sequence

import numpy as np


def save_figure(fig, path: str, dpi: int = 110) -> str:
    """Lays out, writes (creating the folder) and closes a matplotlib figure; returns ``path``."""
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_grid(images, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tiles images [N, H, W, C] in [0, 1] into one [rows*(H+pad)+pad, cols*(W+pad)+pad, C] array."""
    x = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    if x.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {x.shape}")
    n, h, w, c = x.shape
    cols = nrow or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = x[i]
    return grid


def save_image_grid(images, path: str, nrow: int | None = None, scale: int = 3) -> str:
    """Writes a grid of images [N, H, W, C] in [0, 1] as a PNG (nearest-neighbour upscaled)."""
    from PIL import Image

    grid = image_grid(images, nrow)
    grid = np.repeat(np.repeat(grid, scale, 0), scale, 1)
    arr = (grid * 255).round().astype(np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)
    return path


def density_grid(log_density: Callable, bounds: tuple[float, float], resolution: int = 200):
    """Evaluates ``log_density(x [N, 2]) -> [N]`` on a square grid; returns (xs, log_p [res, res])."""
    xs = np.linspace(bounds[0], bounds[1], resolution, dtype=np.float32)
    pts = np.stack(np.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    return xs, np.asarray(log_density(pts), np.float64).reshape(resolution, resolution)


def save_panel(columns: Sequence[dict], path: str, bounds: tuple[float, float], title: str = "",
               log_range: float = 12.0) -> str:
    """2D panel: one column per model; row 1 samples (scatter), row 2 log-density heatmap where known
    (clipped to ``log_range`` nats below its maximum, so sharp and broad densities both show).

    Args:
      columns: dicts with ``title``, ``samples`` [N, 2] and optionally ``log_density``
        (a function of [N, 2] points), ``resolution`` (the side of its grid, default 200) and ``subtitle``.
    """
    plt = pyplot()
    n = len(columns)
    has_density = any(c.get("log_density") is not None for c in columns)
    rows = 2 if has_density else 1
    fig, axes = plt.subplots(rows, n, figsize=(3.0 * n, 3.0 * rows + 0.4), squeeze=False)
    for j, col in enumerate(columns):
        ax = axes[0, j]
        s = np.asarray(col["samples"])
        s = s[np.all(np.isfinite(s), 1)]
        ax.scatter(s[:, 0], s[:, 1], s=1.5, alpha=0.5, color="tab:blue" if j else "black", linewidths=0)
        ax.set_xlim(bounds)
        ax.set_ylim(bounds)
        ax.set_aspect("equal")
        ax.set_title(col["title"] + ("\n" + col["subtitle"] if col.get("subtitle") else ""), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if has_density:
            ax = axes[1, j]
            if col.get("log_density") is not None:
                xs, lp = density_grid(col["log_density"], bounds, col.get("resolution", 200))
                top = np.max(lp[np.isfinite(lp)]) if np.any(np.isfinite(lp)) else 0.0
                lp = np.clip(np.nan_to_num(lp, nan=-np.inf), top - log_range, top)
                ax.imshow(lp, origin="lower", extent=(*bounds, *bounds), cmap="magma", interpolation="bilinear")
                ax.set_title(f"log density (top {log_range:.0f} nats)", fontsize=9)
            else:
                ax.text(0.5, 0.5, "no tractable\ndensity", ha="center", va="center", fontsize=9,
                        transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def save_curves(records: Sequence[dict], keys: Sequence[str], path: str, title: str = "") -> str:
    """Plots ``record[key]`` against ``record['step']`` for each key present (one subplot per key)."""
    plt = pyplot()
    keys = [k for k in keys if any(k in r for r in records)]
    if not keys:
        raise ValueError("none of the requested keys appear in the records")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [(r["step"], r[k]) for r in records if r.get(k) is not None and np.isfinite(r[k])]
        if pts:
            ax.plot(*zip(*pts))
        ax.set_xlabel("step")
        ax.set_title(k, fontsize=10)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=100)
