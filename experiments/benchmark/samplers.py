"""Diffusion sampling: DDPM (all T steps) vs DDIM, and each compiled sampler against steps x one
jitted denoiser call at the same batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments.benchmark import tasks
from experiments.benchmark.suites import Entry, Suite
from experiments.benchmark.timing import time_calls


def measure_samplers(entry: Entry, suite: Suite) -> list[dict]:
    """DDPM (all T steps) vs DDIM (``suite.ddim_steps``) sampling time, and each compiled sampler vs
    steps x one jitted denoiser call at the same batch, for a diffusion config."""
    from gen_jax import diffusion

    apply_fn, params, schedule, example_shape = tasks.diffusion_parts(entry.config)
    n = suite.sample_n.get(entry.size, 16)
    shape = (n, *example_shape)
    T = int(schedule.num_timesteps)
    x = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    t = jnp.full((n,), T // 2, jnp.int32)
    call = jax.jit(apply_fn)
    _, call_s = time_calls(lambda key: call(params, x, t))
    param = entry.config.objective.get("parameterization", "eps")
    ddim_steps = min(suite.ddim_steps, T)
    samplers = [("ddim", ddim_steps, lambda f, k: diffusion.ddim_sample(
        f, params, schedule, k, shape, num_steps=ddim_steps, parameterization=param))]
    if entry.size in suite.ddpm_sizes:
        samplers.insert(0, ("ddpm", T, lambda f, k: diffusion.ddpm_sample(f, params, schedule, k, shape,
                                                                          parameterization=param)))
    records = []
    for name, steps, sample in samplers:
        first_s, s = time_calls(lambda k, sample=sample: sample(apply_fn, k))
        _, bare_s = time_calls(lambda k, sample=sample: sample(zero_denoiser, k))
        records.append({"kind": "sampler", "family": entry.family, "config": entry.name, "size": entry.size,
                        "sampler": name, "steps": steps, "n": n, "median_s": s, "first_call_s": first_s,
                        "denoiser_call_s": call_s, "steps_x_call_s": steps * call_s,
                        "overhead_ratio": s / (steps * call_s), "no_network_s": bare_s})
    return records


def zero_denoiser(params, x_t, t, label=None):
    """A denoiser that predicts 0: timing a sampler with it isolates the sampler's own arithmetic
    (noise draws, posterior means, the scan) from the network."""
    del params, t, label
    return x_t * 0.0
