"""Train steps timed in a fresh subprocess (``python -m experiments.benchmark --worker ARGS``): with
other ``XLA_FLAGS``, or with N forced host devices on CPU, neither of which a running JAX can change."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax

from experiments.benchmark import tasks
from experiments.benchmark.suites import Entry, Suite, batch_for, entry_of
from experiments.benchmark.timing import aot_compile, jittable, summarize, timed_steps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 900


def run_worker(entry: Entry, suite: Suite, *, devices: int = 1, xla_flags: tuple[str, ...] = (),
               drop_flags: tuple[str, ...] = (), force_host_devices: bool = False) -> dict:
    """Times ``entry``'s train step in a fresh subprocess (:func:`worker`) with extra ``XLA_FLAGS``,
    without the flags named like those in ``drop_flags``, and, on CPU, ``devices`` forced host
    devices. Returns the worker's JSON, or ``{'error': ...}`` (the worker failed or timed out)."""
    from gen_jax.train.platform import flag_name

    env = dict(os.environ)
    dropped = {flag_name(f) for f in drop_flags}
    flags = [f for f in env.get("XLA_FLAGS", "").split() if flag_name(f) not in dropped] + list(xla_flags)
    if force_host_devices:
        flags = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
        flags.append(f"--xla_force_host_platform_device_count={devices}")
        env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = " ".join(flags)
    args = {"config": entry.name, "arg": suite.config_arg, "batch": batch_for(entry, suite), "devices": devices,
            "warmup": suite.warmup, "steps": suite.section_steps}
    try:
        proc = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--worker", json.dumps(args)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {TIMEOUT_S} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker(args: dict) -> dict:
    """Subprocess body of :func:`run_worker`: times the step on ``args['devices']`` devices (state
    replicated, batch sharded) and returns one JSON-able dict."""
    from gen_jax.train import make_mesh, replicate, shard_batch

    if jax.device_count() < args["devices"]:
        raise RuntimeError(f"need {args['devices']} devices, have {jax.device_count()}")
    entry = entry_of(args["config"], args["arg"])
    task, data = tasks.load(entry.config, args["batch"])
    mesh = make_mesh(jax.devices()[:args["devices"]])
    state = replicate(tasks.init_fn(task)(jax.random.key(0)), mesh)
    batch = shard_batch(tasks.example_batch(data, args["batch"]), mesh)
    compiled, compile_times = aot_compile(jittable(tasks.train_step(task)), state, batch)
    _, times = timed_steps(compiled, state, batch, args["warmup"], args["steps"])
    stats = summarize(times)
    return {**stats, "examples_per_s": args["batch"] / stats["median_s"], "device_count": jax.device_count(),
            "compile_s": compile_times["compile_s"]}
