"""The main job: train every family on a toy 2D distribution and compare them in one picture.

``python -m experiments.quickstart [--workdir runs/quickstart] [--data ring8] [--scale 1.0]``

Writes ``WORKDIR/panel.png`` (data vs each family's samples; density heatmaps where the family has
a density), ``WORKDIR/metrics.jsonl`` (one record per family), ``WORKDIR/summary.json``, one run
directory per family, and prints a table: NLL in nats next to the true entropy where defined, modes
captured and % high-quality samples for every family.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli
from experiments.run import train_and_evaluate
from gen_jax import viz
from gen_jax.data import toy
from gen_jax.train import json_dumps

# (family label, config module, training steps at --scale 1): about 3 minutes in all on 2 CPU cores.
RUNS = [
    ("flow (NSF)", "nsf_toy", 3000),
    ("diffusion (DDPM)", "ddpm_toy", 3000),
    ("VAE", "vae_toy", 3000),
    ("GAN", "gan_ring8", 3000),
]


def _available():
    for label, module, steps in RUNS:
        try:
            cfg_module = importlib.import_module(f"experiments.configs.{module}")
        except ModuleNotFoundError:
            continue  # family not built yet
        yield label, module, steps, cfg_module


def run(workdir: str, data: str = "ring8", scale: float = 1.0, restart: bool = False) -> dict:
    os.makedirs(workdir, exist_ok=True)
    dist = toy.get_toy(data)
    columns = [{"title": f"data ({data})", "samples": np.asarray(dist.sample(jax.random.key(0), 2000)),
                "log_density": dist.log_prob}]
    rows = []
    t_all = time.perf_counter()
    for label, module, steps, cfg_module in _available():
        config = cfg_module.get_config()
        config.data.name = data
        config.train.num_steps = max(1, int(steps * scale))
        config.optim.warmup_steps = min(config.optim.warmup_steps, config.train.num_steps // 10)
        config.train.checkpoint_every = config.train.num_steps
        config.eval.num_samples = 2500
        if "ode_examples" in config.eval:  # the exact ODE likelihood (not in the table): 500 held-out points, not 2000
            config.eval.ode_examples = 500
        print(f"== {label}: {module}, {config.train.num_steps} steps", flush=True)
        t0 = time.perf_counter()
        result = train_and_evaluate(config, os.path.join(workdir, module), restart=restart)
        ev = result.summary["eval"]
        row = {"family": label, "config": module, "steps": config.train.num_steps,
               "time_s": round(time.perf_counter() - t0, 1), "nll_nats": ev.get("nll_nats"),
               "entropy_nats": result.summary.get("entropy_nats"), "modes": ev.get("modes"),
               "num_modes": ev.get("num_modes", float(len(getattr(dist, "means", ())))),
               "hq_percent": ev.get("hq_percent")}
        rows.append(row)
        ctx = result.ctx
        samples = ctx.sample(jax.random.key(1), 2000)[0]  # the first seed when several were trained
        density = None
        if ctx.log_density is not None:
            density = (lambda f, p: lambda x: f(p, jnp.asarray(x, jnp.float32)))(ctx.log_density, ctx.params[0])
        sub = f"modes {row['modes']:.0f}/{row['num_modes']:.0f}, HQ {row['hq_percent']:.0f}%" \
            if row["modes"] is not None else ""
        columns.append({"title": label, "subtitle": sub, "samples": samples, "log_density": density,
                        "resolution": ctx.density_resolution})
    panel = viz.save_panel(columns, os.path.join(workdir, "panel.png"), dist.bounds,
                           title=f"gen_jax quickstart: {data}")
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for r in rows:
            f.write(json_dumps(r) + "\n")
    summary = {"data": data, "entropy_nats": dist.entropy, "total_time_s": round(time.perf_counter() - t_all, 1),
               "families": rows, "panel": os.path.relpath(panel, workdir)}
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        f.write(json_dumps(summary, indent=2))
    print(format_table(rows, dist.entropy))
    print(f"total {summary['total_time_s']} s; panel: {panel}")
    return summary


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def format_table(rows: list[dict], entropy: float) -> str:
    lines = ["| family | steps | time (s) | NLL (nats) | true entropy (nats) | modes | HQ % |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        modes = "-" if r["modes"] is None else f"{r['modes']:.0f}/{r['num_modes']:.0f}"
        lines.append(f"| {r['family']} | {r['steps']} | {r['time_s']} | {_fmt(r['nll_nats'], '.3f')} | "
                     f"{entropy:.3f} | {modes} | {_fmt(r['hq_percent'], '.1f')} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="runs/quickstart")
    p.add_argument("--data", default="ring8", choices=sorted(toy.TOY_DATASETS))
    p.add_argument("--scale", type=float, default=1.0, help="multiply every family's training steps")
    p.add_argument("--restart", action="store_true", help="discard earlier checkpoints in WORKDIR")
    args = p.parse_args(argv)
    from absl import logging

    from gen_jax.train import configure_xla_cpu

    configure_xla_cpu()  # before the first JAX computation, as every experiments CLI
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO

    def job() -> int:
        run(args.workdir, args.data, args.scale, args.restart)
        return 0

    return cli.run_and_exit_code(job)  # a diverged family: exit code 3 with one line


if __name__ == "__main__":
    sys.exit(main())
