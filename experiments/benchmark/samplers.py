"""Diffusion sampling: DDPM (all T steps) vs DDIM, the fast samplers (DPM-Solver++(2M), EDM Heun) of every
diffusion and flow-matching model, and each compiled sampler against network calls x one jitted call at the
same batch."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from experiments.benchmark import tasks
from experiments.benchmark.suites import Entry, Suite
from experiments.benchmark.timing import time_calls


def measure_samplers(entry: Entry, suite: Suite) -> list[dict]:
    """Sampling time of a diffusion or flow-matching config: DDPM models' DDPM (all T steps, on
    ``suite.ddpm_sizes``) and DDIM (``suite.ddim_steps``) chains, also against the same chain with a network
    that returns 0; VDM's ancestral and flow matching's Heun chains; and every model's DPM-Solver++(2M)
    (``suite.ddim_steps`` calls, at most 20) and EDM Heun (10 levels). Each against its number of network calls
    x one jitted data-prediction call at the same batch."""
    from experiments.samplers import sampler_options
    from gen_jax import diffusion

    task, data = tasks.load(entry.config, 16)
    model, params = task.model, tasks.init_fn(task)(jax.random.key(0)).eval_params
    n = suite.sample_n.get(entry.size, 16)
    shape = (n, *data.shape)
    x = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    x_hat, lmax, lmin = model.data_predictor(params)
    call = jax.jit(x_hat)
    _, call_s = time_calls(lambda key: call(x, 0.5 * (lmax + lmin)))
    steps = suite.ddim_steps
    if isinstance(model, diffusion.DiffusionModel):
        T = int(model.schedule.num_timesteps)
        native = ([("ddpm", T)] if entry.size in suite.ddpm_sizes else []) + [("ddim", min(steps, T))]
    elif isinstance(model, diffusion.VariationalDiffusionModel):
        native = [("ancestral", steps)]
    else:
        native = [("heun", max(steps // 2, 1))]
    records = []
    fast = [("dpm_solver_pp_2m", min(steps, 20)), ("dpm_solver_pp_2m_sde", min(steps, 20)),
            ("edm_heun", min(steps, 10))]
    for name, k in native + fast:
        options, nfe = sampler_options(model, name, k, task.experiment.sample_options)
        first_s, s = time_calls(lambda key, options=options: model.sample(params, key, n, **options))
        bare_s = None
        if name in ("ddpm", "ddim"):  # the chain alone: the same sampler with a network that returns 0
            sample = diffusion.ddpm_sample if name == "ddpm" else functools.partial(diffusion.ddim_sample, num_steps=k)
            _, bare_s = time_calls(lambda key, sample=sample: sample(
                zero_denoiser, params, model.schedule, key, shape, parameterization=model.parameterization))
        records.append({"kind": "sampler", "family": entry.family, "config": entry.name, "size": entry.size,
                        "sampler": name, "steps": nfe, "n": n, "median_s": s, "first_call_s": first_s,
                        "denoiser_call_s": call_s, "steps_x_call_s": nfe * call_s,
                        "overhead_ratio": s / (nfe * call_s), "no_network_s": bare_s})
    return records


def zero_denoiser(params, x_t, t, label=None):
    """A denoiser that predicts 0: timing a sampler with it isolates the sampler's own arithmetic
    (noise draws, posterior means, the scan) from the network."""
    del params, t, label
    return x_t * 0.0
