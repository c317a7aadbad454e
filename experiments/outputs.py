"""What a finished run writes besides its checkpoints: sample pictures, curves, family figures, the report."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments.tasks.base import Context
from gen_jax import viz
from gen_jax.train import TIMING_KEYS, read_metrics


def save_samples(ctx: Context, key: jax.Array, n: int, path: str, density: bool = False) -> np.ndarray:
    """Samples of seed 0 as a grid (images) or next to the data (toy: with the model's density of seed 0
    where it has one and ``density``; points: their first two coordinates); returns all seeds' samples
    ``[K, n, ...]``."""
    samples = ctx.sample(key, n)
    shown = samples[0]
    if ctx.data.kind == "image":
        viz.save_image_grid(shown[:64], path)
        return samples
    if ctx.data.kind == "points":
        real = ctx.data.train.read(np.arange(min(len(shown), ctx.data.num_train)))["x"]
        real, shown = (np.pad(a, ((0, 0), (0, max(0, 2 - a.shape[1])))) for a in (real, shown))  # 1-D: y = 0
        lo, hi = np.percentile(real[:, :2], [0.5, 99.5])
        pad = 0.1 * (hi - lo)
        dims = "" if ctx.data.shape[0] == 2 else " (coordinates 0 and 1)"
        viz.save_panel([{"title": f"data ({os.path.basename(ctx.data.name)}){dims}", "samples": real[:, :2]},
                        {"title": "samples", "samples": shown[:, :2]}], path, (float(lo - pad), float(hi + pad)))
        return samples
    toy = ctx.data.toy
    log_density = None
    if density and ctx.log_density is not None:
        params = ctx.params[0]
        log_density = lambda x: ctx.log_density(params, jnp.asarray(x, jnp.float32))  # noqa: E731
    real = np.asarray(toy.sample(jax.random.key(1), len(shown)))
    viz.save_panel([{"title": f"data ({ctx.data.name})", "samples": real, "log_density": toy.log_prob},
                    {"title": "samples", "samples": shown, "log_density": log_density,
                     "resolution": ctx.density_resolution}], path, toy.bounds)
    return samples


def save_curves(workdir: str, title: str) -> None:
    """``curves.png`` of metrics.jsonl: training metrics first, then the periodic ``eval_*`` ones (six)."""
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    if records:
        keys = dict.fromkeys(k for r in records for k in r)
        shown = [k for k in keys if k not in ("step", "skipped", *TIMING_KEYS)]
        viz.save_curves(records, shown[:6], os.path.join(workdir, "curves.png"), title=title)


def save_figures(figures: list, ctx: Context, key: jax.Array, workdir: str) -> list[str]:
    """Runs the family figures (``config.eval.figures``); their paths relative to the workdir."""
    return [os.path.relpath(p, workdir) for fig in figures for p in fig(ctx, key, workdir)]


def write_report(config, summary: dict, workdir: str) -> None:
    """``report.md``: the test metrics and every picture."""
    lines = [f"# {config.family} on {config.data.name}", "",
             f"steps: {summary['steps']}, train time: {summary['train_time_s']} s", ""]
    for split, fp in summary.get("data_fingerprint", {}).items():
        lines += [f"{split} data: {fp['name']}, {fp['examples']} examples of shape {fp['shape']}, "
                  f"sha256 {fp['sha256']}", ""]
    lines += ["| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4g} |" for k, v in summary["eval"].items()]  # nan/inf print as such
    if "entropy_nats" in summary:
        lines.append(f"| true entropy (nats) | {summary['entropy_nats']:.4g} |")
    lines += ["", "![samples](samples.png)", ""]
    if os.path.exists(os.path.join(workdir, "curves.png")):
        lines += ["![curves](curves.png)", ""]
    lines += [f"![{p}]({p})" for p in summary.get("figures", [])]
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
