"""The per-config measurements: parameters (and the architecture module by module), compile time
cold and warm, steady-state step time, FLOPs and fraction of peak, memory, the per-op profile and the
loop check; or, for models too big to time, parameters and FLOPs of the lowered step."""

from __future__ import annotations

import math
import time

import jax

from experiments.benchmark import tasks
from experiments.benchmark.hlo import flops_of, loops_with_matmuls, memory_of, profile_ops
from experiments.benchmark.loop_check import data_source_transfers, loop_check
from experiments.benchmark.suites import SUITES, Entry, Suite, batch_for
from experiments.benchmark.timing import (CompileEvents, MatmulProbe, aot_compile, fractions, jittable, placed,
                                          process_peak_memory, summarize, timed_steps)


def param_counts(state) -> dict[str, int]:
    """Trainable parameter count of a (possibly abstract) state: ``{'params': n}`` or per player."""
    return {name: int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
            for name, tree in tasks.param_trees(state).items()}


def layer_table(params, depth: int = 2) -> list[tuple[str, str, int]]:
    """``(module path, leaf shapes, count)`` per module at ``depth`` of a params pytree: the
    architecture layer by layer, as the parameters show it."""
    rows: dict[str, list] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        module = "/".join(names[:-1][:depth]) or "-"
        rows.setdefault(module, []).append((names[-1] if len(names) <= depth + 1 else "/".join(names[depth:]),
                                            tuple(leaf.shape)))
    return [(m, ", ".join(f"{n}{list(s)}" for n, s in leaves), sum(math.prod(s) for _, s in leaves))
            for m, leaves in rows.items()]


def architecture(entry: Entry) -> dict:
    """The parameters of ``entry``'s model grouped by module (``architectures.md``): ``{'family',
    'size', 'rows': [(module, shapes, count)], 'total'}``; players prefixed ``G:`` / ``D:``."""
    task, _ = tasks.load(entry.config, batch_for(entry, SUITES["smoke"]) if entry.size == "toy" else 8)
    trees = tasks.param_trees(tasks.abstract_state(task, jax.random.key(0)))
    rows = []
    for prefix, tree in trees.items():
        prefix = "" if prefix == "params" else f"{prefix}:"
        rows += [(prefix + m, s, c) for m, s, c in layer_table(tree)]
    return {"family": entry.family, "size": entry.size, "rows": rows, "total": sum(c for _, _, c in rows)}


def measure_config(entry: Entry, suite: Suite, peak_flops: float, warm_cache: bool) -> list[dict]:
    """Compile (cold, warm), step time, FLOPs, memory, per-op profile and the loop check of one config."""
    batch_size = batch_for(entry, suite)
    task, data = tasks.load(entry.config, batch_size)
    base = {"family": entry.family, "config": entry.name, "size": entry.size, "batch": batch_size}
    key = jax.random.key(0)
    records = [dict(base, kind="params", **param_counts(tasks.abstract_state(task, key)))]
    state, batch = placed(tasks.init_fn(task)(key), tasks.example_batch(data, batch_size))
    step = tasks.train_step(task)
    jitted = jittable(step)

    with CompileEvents() as cold_events:
        compiled, cold = aot_compile(jitted, state, batch)
    rec = dict(base, kind="compile", cold_total_s=cold["total_s"], cold_trace_s=cold["trace_s"],
               cold_lower_s=cold["lower_s"], cold_compile_s=cold["compile_s"])
    if warm_cache:
        jax.clear_caches()
        with CompileEvents() as warm_events:
            compiled, warm = aot_compile(jitted, state, batch)
        rec.update(warm_total_s=warm["total_s"], warm_trace_s=warm["trace_s"], warm_lower_s=warm["lower_s"],
                   warm_compile_s=warm["compile_s"], warm_cache_hits=warm_events.cache_hits,
                   cold_cache_hits=cold_events.cache_hits)
    records.append(rec)

    flops = flops_of(compiled.cost_analysis())
    matmul_loops = loops_with_matmuls(compiled.as_text())
    memory = memory_of(compiled)
    probe = MatmulProbe(suite.matmul_n)
    state, times = timed_steps(step, state, batch, suite.warmup, suite.steps, probe)
    stats = summarize(times)
    rec = dict(base, kind="step", **stats, examples_per_s=batch_size / stats["median_s"], flops=flops,
               flops_lower_bound=matmul_loops > 0, local_peak_gflops_per_s=probe.flops_per_s / 1e9)
    if flops:
        rec.update(fractions(flops, stats["median_s"], probe, peak_flops))
    records.append(dict(rec, **memory, **process_peak_memory()))
    state, prof = profile_ops(step, state, batch, compiled.as_text())
    records.append(dict(base, kind="profile", **prof))
    records.append(dict(base, kind="loop_check", **loop_check(task, state, batch, suite.loop_steps, stats["median_s"]),
                        data_source_transfers=data_source_transfers(data, batch_size)))
    return records


def describe_config(entry: Entry, suite: Suite) -> list[dict]:
    """Parameter count and FLOPs of the lowered (unoptimised) step, without compiling it."""
    batch_size = batch_for(entry, suite) if entry.size in suite.batch_size else 128
    task, data = tasks.load(entry.config, batch_size)
    base = {"family": entry.family, "config": entry.name, "size": entry.size, "batch": batch_size}
    abstract = tasks.abstract_state(task, jax.random.key(0))
    batch = tasks.example_batch(data, batch_size)
    abstract_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
    t0 = time.perf_counter()
    lowered = jittable(tasks.train_step(task)).trace(abstract, abstract_batch).lower()
    lower_s = time.perf_counter() - t0
    return [dict(base, kind="params", **param_counts(abstract)),
            dict(base, kind="lowered", flops_hlo=flops_of(lowered.cost_analysis()), trace_lower_s=lower_s)]
