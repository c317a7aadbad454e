"""Samplers of a trained diffusion or flow-matching run: cost (network calls, seconds per sample) against quality.

    python -m experiments.samplers --config ddpm_toy --workdir runs/ddpm_toy \\
        --samplers ddpm:1000,ddim:50,dpm_solver_pp_2m:10,dpm_solver_pp_2m:20,edm_heun:10,edm_heun:18

restores the run's newest checkpoint (its evaluation parameters, the EMA), draws ``--n`` samples with each
``sampler:steps`` from the same key and scores them with the run's sample evaluators (toy: mode coverage and
the Frechet distance in the plane; images: the Frechet distance in the small classifier's features). Writes
``samplers.md`` and ``samplers.json`` in the workdir. Samplers: ``ddpm``, ``ddim`` (DDPM models), ``ancestral``
(VDM), ``heun``/``euler`` (flow matching ODE), and for every model ``dpm_solver_pp_2m``, ``dpm_solver_pp_2m_sde``
and ``edm_heun`` (``edm_heun:steps:churn``: EDM's stochastic sampler with S_churn = churn;
``dpm_solver_pp_2m:steps:karras``, ``dpm_solver_pp_2m_sde:steps:karras``: on Karras et al.'s levels instead of
uniform in log-SNR).
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from experiments.configs.common import image_frechet_eval
from experiments.evaluators.samples import FrechetDistance, ModeCoverage
from experiments.run import prepare

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The run's config (a name in experiments/configs or a path).",
                                lock_config=False)
flags.DEFINE_string("workdir", None, "The trained run's workdir.")
flags.DEFINE_string("samplers", "dpm_solver_pp_2m:10,dpm_solver_pp_2m:20,edm_heun:10,edm_heun:18",
                    "Comma-separated sampler:steps, edm_heun:steps:churn or dpm_solver_pp_2m[_sde]:steps:spacing.")
flags.DEFINE_integer("n", 2000, "Samples per sampler.")
flags.DEFINE_integer("seed", 0, "Key of the samples.")
flags.DEFINE_bool("timed_repeat", True, "Time each sampler on a second, compiled call (the first call compiles); "
                  "--notimed_repeat draws once and reports that call's seconds, compilation included (for samplers "
                  "so slow that compilation is noise, e.g. 1000-step DDPM on a U-Net).")

DPM_SOLVERS = ("dpm_solver_pp_2m", "dpm_solver_pp_2m_sde")  # the samplers that take a spacing (sampler:steps:spacing)


def sampler_options(model, sampler: str, steps: int, base: dict, churn: float = 0.0,
                    spacing: str | None = None) -> tuple[dict, int]:
    """``model.sample`` options of ``sampler`` with ``steps`` (``churn``: EDM's S_churn, 'edm_heun' only;
    ``spacing``: the DPM-Solver++ samplers' levels), and its number of network calls."""
    from gen_jax.diffusion import FAST_SAMPLERS

    if churn and sampler != "edm_heun":
        raise ValueError(f"a churn (sampler:steps:churn) is an option of edm_heun only; got {sampler!r}")
    if spacing is not None and sampler not in DPM_SOLVERS:
        raise ValueError(f"a spacing (sampler:steps:spacing) is an option of the DPM-Solver++ samplers only; "
                         f"got {sampler!r}")
    clip = {k: base[k] for k in ("clip_x", "clip_x0") if k in base}
    if sampler in FAST_SAMPLERS:
        nfe = 2 * steps - 1 if sampler == "edm_heun" else steps
        return {"sampler": sampler, "num_steps": steps, **({"churn": churn} if churn else {}),
                **({"spacing": spacing} if spacing else {}),
                **({"clip_x": clip.get("clip_x", clip.get("clip_x0"))} if clip else {})}, nfe
    if sampler in ("ddpm", "ddim"):  # DDPM models (DDIM: eta = 0)
        opts = {k: v for k, v in base.items() if k != "sampler"}
        opts.update(sampler=sampler, ddim_steps=steps)
        return opts, steps
    if sampler == "ancestral":  # VDM
        return {**base, "num_steps": steps, "deterministic": False}, steps
    if sampler in ("heun", "euler"):  # flow matching
        return {**base, "num_steps": steps, "solver": sampler}, (2 * steps if sampler == "heun" else steps)
    raise ValueError(f"unknown sampler {sampler!r}")


def compare(config, workdir: str, specs: list[tuple], n: int, seed: int, log=print,
            timed_repeat: bool = True) -> list[dict]:
    """One row per ``(sampler, steps)``, ``(sampler, steps, churn)`` or ``(sampler, steps, spacing)`` of ``specs`` (see
    the module docstring)."""
    p = prepare(config, workdir)
    if p.resumed_from is None:
        raise ValueError(f"{workdir} has no checkpoint to sample from; train it first")
    if p.data.kind == "image" and "fd_num_samples" not in config.eval:  # a config without the frechet evaluator
        with config.unlocked():
            image_frechet_eval(config, num_samples=n)
            config.eval.classifier_path = os.path.join(workdir, "classifier.msgpack")
    ctx = p.seeds.update(p.ctx, p.state)
    model, params = ctx.model, ctx.params[0]
    scorers = [FrechetDistance(config.eval, ctx)]
    if p.data.kind == "toy":
        scorers.insert(0, ModeCoverage(config.eval, ctx))
    rows = []
    for sampler, steps, *rest in specs:
        spacing = rest[0] if rest and isinstance(rest[0], str) else None
        churn = float(rest[0]) if rest and spacing is None else 0.0
        options, nfe = sampler_options(model, sampler, steps, ctx.sample_options, churn, spacing)
        if churn:
            sampler = f"{sampler} (churn {churn:g})"
        if spacing:
            sampler = f"{sampler} ({spacing})"
        key = jax.random.key(seed)
        t0 = time.perf_counter()
        x = np.asarray(jax.device_get(model.sample(params, key, n, **options)))
        first = seconds = time.perf_counter() - t0
        if timed_repeat:
            t0 = time.perf_counter()
            x = np.asarray(jax.device_get(model.sample(params, key, n, **options)))
            seconds = time.perf_counter() - t0
        row = {"sampler": sampler, "steps": steps, "nfe": nfe, "n": n, "seconds": seconds, "first_call_s": first,
               "ms_per_sample": 1e3 * seconds / n}
        for scorer in scorers:
            row.update(scorer(params, jax.random.key(seed + 1), x))
        if log:
            log(json.dumps(row))
        rows.append(row)
    return rows


def write(rows: list[dict], workdir: str, title: str) -> str:
    keys = [k for k in rows[0] if k not in ("sampler", "steps", "nfe", "n", "first_call_s", "seconds")]
    lines = [f"# Samplers: {title}", "", "| sampler | steps | network calls | n | s | " + " | ".join(keys) + " |",
             "| --- " * (5 + len(keys)) + "|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['n']} | {r['seconds']:.3g} | "
                     + " | ".join(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    path = os.path.join(workdir, "samplers.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(workdir, "samplers.json"), "w") as f:
        json.dump(rows, f, indent=2)
    return path


def parse_samplers(text: str) -> list[tuple]:
    """``--samplers``' comma-separated items as :func:`compare`'s specs: ``sampler:steps`` -> (sampler, steps),
    ``edm_heun:steps:churn`` -> (..., churn as a float), ``dpm_solver_pp_2m[_sde]:steps:spacing`` -> (..., spacing)."""
    from gen_jax.diffusion import LOG_SNR_SPACINGS

    usage = "--samplers expects sampler:steps (or edm_heun:steps:churn, dpm_solver_pp_2m[_sde]:steps:spacing) items"
    specs = []
    for item in text.split(","):
        name, *rest = item.strip().split(":")
        try:
            steps, option = int(rest[0]), rest[1:]
            if name == "edm_heun":
                option = [float(c) for c in option]
        except (IndexError, ValueError):
            raise cli.UsageError(f"{usage}, got {item!r}") from None
        dpm = name in DPM_SOLVERS
        if len(option) > 1 or steps < 1 or (option and not (name == "edm_heun" or dpm)) or (
                dpm and option and option[0] not in LOG_SNR_SPACINGS):
            raise cli.UsageError(f"{usage} (spacings: {', '.join(LOG_SNR_SPACINGS)}), got {item!r}")
        specs.append((name, steps, *option))
    return specs


def main(argv):
    del argv
    from gen_jax.train import configure_xla_cpu

    configure_xla_cpu()  # before the first JAX computation
    try:
        specs = parse_samplers(FLAGS.samplers)
    except cli.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(cli.EXIT_USAGE)
    rows = compare(FLAGS.config, FLAGS.workdir, specs, FLAGS.n, FLAGS.seed, timed_repeat=FLAGS.timed_repeat)
    print(write(rows, FLAGS.workdir, f"{FLAGS.config.data.name}, {FLAGS.workdir}"))


if __name__ == "__main__":
    sys.argv = cli.prepare_argv(sys.argv)
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
