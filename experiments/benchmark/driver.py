"""One benchmark run: the matmul peak, the per-config measurements, the cross-config sections, the
targets, and the files (``benchmark.json``, ``benchmark.md``, ``architectures.md``)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable

import jax

from experiments.benchmark import tasks
from experiments.benchmark.kernels import measure_kernels
from experiments.benchmark.per_config import architecture, describe_config, measure_config
from experiments.benchmark.report import render_architectures, render_markdown
from experiments.benchmark.samplers import measure_samplers
from experiments.benchmark.input import measure_input
from experiments.benchmark.sections import (measure_batch_scaling, measure_data_parallel, measure_donation,
                                            measure_op_by_op, measure_vmap, measure_xla_flags)
from experiments.benchmark.suites import (SECTIONS, Entry, Suite, cheapest, discover, evaluate_targets,
                                          with_variants)
from experiments.benchmark.timing import configure_jax, matmul_peak
from experiments.benchmark.workers import ROOT

# What a measurement may fail with and still leave the run going (recorded as an 'error' record): XLA
# runtime errors (out of device memory, a program the backend cannot compile or run), a feature the
# backend or family does not implement, and host memory exhaustion. Anything else is a bug: it propagates.
MEASUREMENT_ERRORS = (jax.errors.JaxRuntimeError, NotImplementedError, MemoryError)
# frameworks whose twins of the standard configs the 'peers' section can time (``--peers``)
PEERS = ("torch",)


def environment(suite: Suite, argv: list[str]) -> dict:
    """Versions, device, CPU, load, flags and git state of this run."""
    import flax
    import jaxlib
    import optax

    dev = jax.devices()[0]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", None
    cpu_model = platform.processor()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                             cpu_model)
    return {
        "suite": suite.name, "command": "python -m experiments.benchmark " + " ".join(argv),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__,
        "python": platform.python_version(), "backend": jax.default_backend(),
        "platform_version": getattr(dev.client, "platform_version", ""), "device_kind": dev.device_kind,
        "device_count": jax.device_count(), "cpu_model": cpu_model, "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""), "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", ""),
        "default_matmul_precision": str(jax.config.jax_default_matmul_precision), "git_commit": commit,
        "git_dirty": dirty,
    }


def guard(records: list[dict], what: str, entry: Entry | None, fn: Callable[[], Any]) -> None:
    """Runs one measurement (without a dataset); an expected failure (:data:`MEASUREMENT_ERRORS`)
    becomes an 'error' record instead of ending the run."""
    try:
        out = fn()
    except MEASUREMENT_ERRORS as e:
        records.append({"kind": "error", "what": what, "family": entry.family if entry else "-",
                        "config": entry.name if entry else "-", "error": f"{type(e).__name__}: {e}",
                        "traceback": traceback.format_exc()[-2000:]})
        print(f"  {what} failed: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr, flush=True)
        return
    records.extend(out if isinstance(out, list) else [out])


def run(suite: Suite, families: tuple[str, ...], out_dir: str, names: tuple[str, ...] = (),
        argv: list[str] | None = None, log: Callable[[str], None] = print, skip: tuple[str, ...] = (),
        only: tuple[str, ...] = (), data_dir: str | None = None, peers: tuple[str, ...] = ()) -> dict:
    """Runs ``suite`` over ``families`` (or the named configs) and writes the JSON + markdown.

    ``skip`` names cross-config sections to leave out (a subset of ``SECTIONS``); ``only`` runs just
    those sections, without the per-config table. ``data_dir``: where the input section finds the
    real datasets (tfds); without it, it reads random images from a file. ``peers``: frameworks (of
    :data:`PEERS`) whose twins the 'peers' section times next to each config.
    """
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gen_jax_bench_cache_") as cache_dir:
        configure_jax(cache_dir)
        env = environment(suite, argv or [])
        env["peers"] = list(peers)
        records: list[dict] = []
        t_start = time.perf_counter()

        def stamp(msg: str) -> None:
            log(f"[{time.perf_counter() - t_start:6.1f}s] {msg}")

        peak = matmul_peak(suite.matmul_n)
        records.append({"kind": "matmul_peak", "family": "-", "config": "-", "when": "start", **peak})
        bf16 = matmul_peak(suite.matmul_n, dtype="bfloat16")
        records.append({"kind": "matmul_bf16", "family": "-", "config": "-", **bf16})
        log(f"matmul peak: {peak['gflops_per_s']:.1f} GFLOP/s f32, {bf16['gflops_per_s']:.1f} GFLOP/s bf16")
        entries, skipped = discover(families, suite.config_arg, names)
        records.extend(skipped)
        for s in skipped:
            log(f"skipped {s['family']} {s['config']}: {s['reason'][:200]}")
        measured = [e for e in entries if e.size in suite.measure_sizes or names]
        timed, skipped_variants = with_variants(measured, suite)  # the main table; sections time the bases
        records.extend(skipped_variants)
        described = [e for e in entries if e.size in suite.describe_sizes and not names]
        if only:
            skip = tuple(x for x in SECTIONS if x not in only)
        layers = {} if only else _per_config(records, timed, described, suite, peak["gflops_per_s"] * 1e9,
                                             stamp)
        _sections(records, measured, suite, peak["gflops_per_s"] * 1e9, skip, stamp, data_dir, timed, peers)
        peak_end = matmul_peak(suite.matmul_n)
        records.append({"kind": "matmul_peak", "family": "-", "config": "-", "when": "end", **peak_end})
    env["wall_s"] = time.perf_counter() - t_start
    result = {"env": env, "peak_gflops_per_s": max(peak["gflops_per_s"], peak_end["gflops_per_s"]),
              "records": records}
    # ``peak_fraction_run`` used the start peak; restate it against the larger of the two.
    for r in records:
        if "peak_fraction_run" in r:
            r["peak_fraction_run"] = r["flops"] / r["median_s"] / (result["peak_gflops_per_s"] * 1e9)
    result["targets"] = evaluate_targets(records, jax.default_backend())
    _write(out_dir, result, layers)
    return result


def _per_config(records: list[dict], measured: list[Entry], described: list[Entry], suite: Suite,
                peak_flops: float, stamp: Callable[[str], None]) -> dict[str, dict]:
    """The main table: each measured config timed, each described one lowered; returns the
    architectures (``architectures.md``) of both."""
    layers = {}
    for e in measured + described:
        stamp(f"{e.family} {e.name} ({e.size})")
        guard(records, "layers", e, lambda e=e: _add_architecture(layers, e))
        if e in measured:
            guard(records, "train step", e, lambda e=e: measure_config(e, suite, peak_flops, warm_cache=True))
        else:
            guard(records, "describe", e, lambda e=e: describe_config(e, suite))
    return layers


def _add_architecture(layers: dict[str, dict], entry: Entry) -> list[dict]:
    layers[entry.name] = architecture(entry)
    return []  # no records


def _sections(records: list[dict], measured: list[Entry], suite: Suite, peak_flops: float,
              skip: tuple[str, ...], stamp: Callable[[str], None], data_dir: str | None = None,
              timed: list[Entry] = (), peers: tuple[str, ...] = ()) -> None:
    """The cross-config sections not in ``skip``, each on the configs it applies to (``timed``: ``measured``
    with the suite's variants, which the batch scaling repeats for its config)."""
    on_cpu = jax.default_backend() == "cpu"
    toy = [e for e in measured if e.size == "toy"]
    if toy and suite.op_by_op_steps and "op_by_op" not in skip:
        stamp(f"jit vs op-by-op: {toy[0].name}")
        guard(records, "op-by-op", toy[0], lambda: measure_op_by_op(toy[0], suite))
    if toy and "vmap" not in skip:
        for e in (toy if suite.name != "smoke" else toy[:1]):
            stamp(f"vmap over seeds: {e.name}")
            guard(records, "vmap", e, lambda e=e: measure_vmap(e, suite))
    for size in suite.tuning_sizes if suite.conv_seeds and "vmap" not in skip else ():
        pick = cheapest([e for e in measured if e.size == size and tasks.resolved_replica_map(e.config) == "unroll"], records)
        if pick is not None:
            stamp(f"K seeds of a convolutional config: {pick.name}")
            guard(records, "vmap", pick, lambda p=pick: measure_vmap(p, suite, suite.conv_seeds, ("auto", "vmap")))
    for size, batches in ({} if "scaling" in skip else suite.scaling_batches).items():
        pick = cheapest([e for e in measured if e.size == size], records)
        for e in [] if pick is None else [pick, *(v for v in timed if v.name.startswith(pick.name + "["))]:
            stamp(f"batch scaling: {e.name}")
            guard(records, "batch scaling", e, lambda p=e, b=batches: measure_batch_scaling(p, b, suite, peak_flops))
    for size in () if "dp" in skip else suite.dp_sizes:
        pick = cheapest([e for e in measured if e.size == size], records)
        if pick is not None:
            stamp(f"data parallel: {pick.name}")
            guard(records, "data parallel", pick, lambda p=pick: measure_data_parallel(p, suite, on_cpu))
    for size in suite.tuning_sizes:
        pick = cheapest([e for e in measured if e.size == size], records)
        if pick is not None and "donation" not in skip:
            stamp(f"donation: {pick.name}")
            guard(records, "donation", pick, lambda p=pick: measure_donation(p, suite))
        if pick is not None and suite.flag_variants and "flags" not in skip:
            stamp(f"XLA flags: {pick.name}")
            guard(records, "XLA flags", pick, lambda p=pick: measure_xla_flags(p, suite))
    if suite.kernel_batch and "kernels" not in skip:
        stamp("conv kernels")
        guard(records, "kernels", None, lambda: measure_kernels(suite, suite.kernel_batch))
    for e in (e for e in measured if e.size != "toy" and e.family in ("diffusion", "gan") and "input" not in skip):
        stamp(f"input pipeline: {e.name}")
        guard(records, "input", e, lambda e=e: measure_input(e, suite, data_dir))
    for e in (e for e in measured if e.family == "diffusion" and "samplers" not in skip):
        stamp(f"samplers: {e.name}")
        guard(records, "samplers", e, lambda e=e: measure_samplers(e, suite))
    if "torch" in peers and not {"peers", "peer_layers"} <= set(skip):
        _torch_peers(records, measured, suite, stamp, skip)


def _torch_peers(records: list[dict], measured: list[Entry], suite: Suite, stamp: Callable[[str], None],
                 skip: tuple[str, ...] = ()) -> None:
    """The 'peers' and 'peer_layers' sections for PyTorch (those not in ``skip``): every measured config with a
    twin; a note where torch or a twin is missing."""
    from experiments.benchmark import peers

    missing = peers.torch_missing()
    if missing:
        records.append({"kind": "skipped", "family": "-", "config": "-", "what": "peers", "reason": missing})
        return
    from experiments.benchmark.peers.layers import measure_peer_layers
    from experiments.benchmark.peers.section import measure_peers

    for e in measured:
        if "[" in e.name:
            records.append({"kind": "skipped", "family": e.family, "config": e.name, "what": "peers",
                            "reason": "twins mirror the base configs, not overridden ones"})
            continue
        if e.name not in peers.TWINS:
            records.append({"kind": "skipped", "family": e.family, "config": e.name, "what": "peers",
                            "reason": f"no PyTorch twin (twins: {', '.join(sorted(peers.TWINS))})"})
            continue
        if "peers" not in skip:
            stamp(f"PyTorch peer: {e.name}")
            guard(records, "peers", e, lambda e=e: measure_peers(e, suite))
        if "peer_layers" not in skip:
            stamp(f"PyTorch peer layers: {e.name}")
            guard(records, "peer layers", e, lambda e=e: measure_peer_layers(e, suite))


def _write(out_dir: str, result: dict, layers: dict[str, dict]) -> None:
    with open(os.path.join(out_dir, "benchmark.json"), "w") as f:
        json.dump(result, f, indent=2, default=str)
    with open(os.path.join(out_dir, "benchmark.md"), "w") as f:
        f.write(render_markdown(result))
    with open(os.path.join(out_dir, "architectures.md"), "w") as f:
        f.write(render_architectures(layers))
