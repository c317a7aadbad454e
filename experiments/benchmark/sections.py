"""The cross-config sections that time one config many ways: jit vs op-by-op, K seeds in one program,
batch-size scaling, data parallelism and XLA flags (subprocesses), and state donation on/off."""

from __future__ import annotations

import os

import jax
import numpy as np

from experiments.benchmark import tasks
from experiments.benchmark.hlo import flops_of, memory_of
from experiments.benchmark.suites import Entry, Suite, batch_for
from experiments.benchmark.timing import MatmulProbe, fractions, jittable, placed, summarize, timed_steps
from experiments.benchmark.workers import run_worker


def measure_op_by_op(entry: Entry, suite: Suite) -> dict:
    """jit vs op-by-op (``jax.disable_jit``) step time of one config."""
    batch_size = batch_for(entry, suite)
    task, data = tasks.load(entry.config, batch_size)
    init, step = tasks.init_fn(task), tasks.train_step(task)
    state, batch = placed(init(jax.random.key(0)), tasks.example_batch(data, batch_size))
    state, jit_times = timed_steps(step, state, batch, suite.warmup, max(suite.steps, 5))
    state, _ = placed(init(jax.random.key(0)), {})
    with jax.disable_jit():
        state, eager_times = timed_steps(step, state, batch, 1, suite.op_by_op_steps)
    jit_s, eager_s = float(np.median(jit_times)), float(np.median(eager_times))
    return {"kind": "op_by_op", "family": entry.family, "config": entry.name, "size": entry.size,
            "batch": batch_size, "jit_median_s": jit_s, "op_by_op_median_s": eager_s,
            "op_by_op_n_timed": len(eager_times), "speedup": eager_s / jit_s}


def measure_vmap(entry: Entry, suite: Suite, seeds: tuple[int, ...] | None = None,
                 replica_maps: tuple[str, ...] = ("auto",)) -> list[dict]:
    """Step time of K seeds in one program (``config.num_seeds = K``, each of ``replica_maps``:
    ``config.replica_map``, the way the seeds share the program) vs K sequential single-seed runs, and,
    for reference, one seed at batch K x B: the same arithmetic as one program with K times the rows and
    one set of weights, which is what batching seeds can hope to approach. ``seeds``: the K values
    (default ``suite.vmap_seeds``)."""
    batch_size = batch_for(entry, suite)
    _, data = tasks.load(entry.config, batch_size)
    host = tasks.example_batch(data, batch_size)
    auto = tasks.resolved_replica_map(entry.config, "auto", batch_size)
    single = ceiling = None
    records, wide = [], {}
    ks = (1,) + tuple(x for x in (suite.vmap_seeds if seeds is None else seeds) if x != 1)
    for k, how in [(1, "auto")] + [(k, how) for k in ks[1:] for how in replica_maps]:
        init_k, step_k = tasks.replicated(entry.config, batch_size, k, how)
        state, batch = placed(init_k(jax.random.key(0)), host)
        flops = flops_of(jittable(step_k).lower(state, batch).compile().cost_analysis())
        probe = MatmulProbe(suite.matmul_n)
        state, times = timed_steps(step_k, state, batch, suite.warmup, suite.steps, probe)
        t = float(np.median(times))
        single = t if k == 1 else single
        resolved = auto if how == "auto" and k > 1 else how
        rec = {"kind": "vmap", "family": entry.family, "config": entry.name, "size": entry.size,
               "batch": batch_size, "seeds": k,
               "method": "-" if k == 1 else f"replica_map={how}" + (f" ({resolved})" if how == "auto" else ""),
               "replica_map": resolved, "median_s": t,
               "iqr_s": float(np.subtract(*np.percentile(times, [75, 25]))), "flops": flops,
               "sequential_s": k * single, "speedup_vs_sequential": k * single / t}
        if flops:
            rec["peak_fraction"] = flops / t / probe.flops_per_s
            if k == 1:  # K seeds cost K times the FLOPs: at best the step runs at the matmul peak
                ceiling = 1.0 / rec["peak_fraction"]
        if ceiling is not None:
            rec["speedup_ceiling"] = ceiling
        if k > 1:
            if k not in wide:
                wide[k] = _wide_batch_step_s(entry, suite, k * batch_size)
            rec["wide_batch_s"] = wide[k]
            rec["wide_batch_speedup"] = k * single / rec["wide_batch_s"]
        records.append(rec)
    return records


def _wide_batch_step_s(entry: Entry, suite: Suite, batch_size: int) -> float:
    """Median step time of one seed of ``entry`` at ``batch_size``."""
    task, data = tasks.load(entry.config, batch_size)
    state, batch = placed(tasks.init_fn(task)(jax.random.key(0)), tasks.example_batch(data, batch_size))
    _, times = timed_steps(tasks.train_step(task), state, batch, suite.warmup, suite.steps,
                           MatmulProbe(suite.matmul_n))
    return float(np.median(times))


def measure_batch_scaling(entry: Entry, batches: tuple[int, ...], suite: Suite, peak_flops: float) -> list[dict]:
    """Step time, examples/s, fraction of peak and XLA's buffer memory at several batch sizes of one config,
    and the largest batch whose memory fits the budget (:func:`largest_batch`)."""
    records = []
    for b in batches:
        task, data = tasks.load(entry.config, b)
        step = tasks.train_step(task)
        state, batch = placed(tasks.init_fn(task)(jax.random.key(0)), tasks.example_batch(data, b))
        compiled = jittable(step).lower(state, batch).compile()
        flops = flops_of(compiled.cost_analysis())
        probe = MatmulProbe(suite.matmul_n)
        state, times = timed_steps(step, state, batch, suite.warmup, suite.section_steps, probe)
        stats = summarize(times)
        rec = {"kind": "batch_scaling", "family": entry.family, "config": entry.name, "size": entry.size,
               "batch": b, **stats, "examples_per_s": b / stats["median_s"], "flops": flops, **memory_of(compiled)}
        if flops:
            rec.update(fractions(flops, stats["median_s"], probe, peak_flops))
        records.append(rec)
    fit = largest_batch(records, suite.memory_budget_bytes or device_memory_limit())
    if fit:
        records.append({"kind": "memory_budget", "family": entry.family, "config": entry.name, "size": entry.size,
                        **fit})
    return records


def device_memory_limit() -> int:
    """The first device's memory limit in bytes (GPU/TPU); 0 where the backend reports none (CPU)."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except (NotImplementedError, jax.errors.JaxRuntimeError):
        return 0
    return int(stats.get("bytes_limit", 0))


def largest_batch(records: list[dict], budget_bytes: int) -> dict:
    """The largest batch whose XLA buffer memory fits ``budget_bytes``, from the memory of the two largest
    batches measured (memory is affine in the batch: state + batch x per-example activations), as
    ``{'budget_bytes', 'bytes_per_example', 'fixed_bytes', 'largest_batch'}``; {} without a budget or two sizes."""
    sized = sorted((r["batch"], r["xla_total_bytes"]) for r in records if r.get("xla_total_bytes"))
    if budget_bytes <= 0 or len(sized) < 2:
        return {}
    (b1, m1), (b2, m2) = sized[-2], sized[-1]
    per_example = (m2 - m1) / (b2 - b1)
    fixed = m2 - per_example * b2
    largest = int((budget_bytes - fixed) // per_example) if per_example > 0 else None
    return {"budget_bytes": int(budget_bytes), "bytes_per_example": per_example, "fixed_bytes": fixed,
            "largest_batch": largest}


def measure_data_parallel(entry: Entry, suite: Suite, on_cpu: bool) -> list[dict]:
    """Step time with the batch sharded over N devices, one subprocess per N (strong scaling: the
    global batch is fixed). On CPU the N devices are forced host devices sharing the same cores."""
    records, base_t = [], None
    for n in suite.dp_devices:
        if not on_cpu and n > jax.device_count():
            continue
        out = run_worker(entry, suite, devices=n, force_host_devices=on_cpu)
        base_t = out.get("median_s") if base_t is None else base_t
        if "median_s" in out:
            out["speedup_vs_first"] = base_t / out["median_s"]
        records.append({"kind": "data_parallel", "family": entry.family, "config": entry.name, "size": entry.size,
                        "batch": batch_for(entry, suite), "devices": n, **out})
    return records


def measure_xla_flags(entry: Entry, suite: Suite) -> list[dict]:
    """Step time with this run's ``XLA_FLAGS`` (gen_jax's :data:`~gen_jax.train.XLA_CPU_FLAGS`
    included, see ``__main__.main``), without gen_jax's flags (XLA's own defaults), and with each of
    ``suite.flag_variants`` added; each in a fresh subprocess."""
    from gen_jax.train import XLA_CPU_FLAGS

    variants = [("(as run)", (), ())]
    if any(f in os.environ.get("XLA_FLAGS", "").split() for f in XLA_CPU_FLAGS):
        variants.append(("without " + " ".join(XLA_CPU_FLAGS) + " (XLA's defaults)", (), XLA_CPU_FLAGS))
    variants += [(flags, tuple(flags.split()), ()) for flags in suite.flag_variants]
    records, base_t = [], None
    for label, add, drop in variants:
        out = run_worker(entry, suite, xla_flags=add, drop_flags=drop)
        base_t = out.get("median_s") if base_t is None else base_t
        if "median_s" in out and base_t:
            out["speedup_vs_as_run"] = base_t / out["median_s"]
        records.append({"kind": "xla_flags", "family": entry.family, "config": entry.name, "size": entry.size,
                        "batch": batch_for(entry, suite), "flags": label, **out})
    return records


def measure_donation(entry: Entry, suite: Suite) -> list[dict]:
    """Step time with the state donated (the engine's default) vs not donated (the same step wrapped
    in an outer ``jax.jit`` without donation: donation of a nested jit is ignored)."""
    batch_size = batch_for(entry, suite)
    task, data = tasks.load(entry.config, batch_size)
    init, donated_step = tasks.init_fn(task), tasks.train_step(task)
    host = tasks.example_batch(data, batch_size)
    no_donate = jax.jit(lambda state, batch: donated_step(state, batch))
    records = []
    for name, step in (("donated", donated_step), ("not donated", no_donate)):
        state, batch = placed(init(jax.random.key(0)), host)
        old = jax.tree.leaves(state)[0]
        new_state, _ = step(state, batch)
        donated = old.is_deleted()
        _, times = timed_steps(step, new_state, batch, suite.warmup, 2 * suite.section_steps)
        records.append({"kind": "donation", "family": entry.family, "config": entry.name, "size": entry.size,
                        "batch": batch_size, "variant": name, "input_deleted": donated, **summarize(times)})
    return records
