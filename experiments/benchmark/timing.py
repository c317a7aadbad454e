"""Timing primitives: synchronised step timing, the interleaved matmul peak, AOT compilation with its
phases, compile-event counting, placement on a one-device mesh and the process's peak memory."""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def configure_jax(cache_dir: str) -> None:
    """Turns on the persistent compilation cache in ``cache_dir`` for every compiled program (must run
    before the first compilation of the process)."""
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class CompileEvents:
    """Counts traces, XLA compilations and persistent-cache hits (``jax.monitoring`` events) and
    collects ``jax.log_compiles`` messages while active."""

    def __init__(self, log_compiles: bool = False):
        self.traces = self.compiles = self.cache_hits = 0
        self.messages: list[str] = []
        self._log = log_compiles
        self._stack = contextlib.ExitStack()

    def _on_duration(self, event: str, duration_secs: float, **kwargs) -> None:
        del duration_secs, kwargs
        if event == TRACE_EVENT:
            self.traces += 1
        elif event == COMPILE_EVENT:
            self.compiles += 1

    def _on_event(self, event: str, **kwargs) -> None:
        del kwargs
        if event == CACHE_HIT_EVENT:
            self.cache_hits += 1

    def __enter__(self) -> "CompileEvents":
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        jax.monitoring.register_event_listener(self._on_event)
        self._stack.callback(jax.monitoring.unregister_event_duration_listener, self._on_duration)
        self._stack.callback(jax.monitoring.unregister_event_listener, self._on_event)
        if self._log:
            handler = logging.Handler(logging.DEBUG)
            handler.emit = lambda record: self.messages.append(record.getMessage())
            logger = logging.getLogger("jax")
            old_propagate = logger.propagate
            logger.addHandler(handler)
            logger.propagate = False
            self._stack.callback(setattr, logger, "propagate", old_propagate)
            self._stack.callback(logger.removeHandler, handler)
            self._stack.enter_context(jax.log_compiles(True))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()


class MatmulProbe:
    """An ``[n, n] @ [n, n]`` matmul (default precision) timed in between train steps: the device's
    peak under the same load as the steps, the denominator of the fraction of peak."""

    def __init__(self, n: int, dtype: str = "float32"):
        ka, kb = jax.random.split(jax.random.key(0))
        self.a = jax.random.normal(ka, (n, n), dtype)
        self.b = jax.random.normal(kb, (n, n), dtype)
        self.fn = jax.jit(jnp.matmul)
        self.fn(self.a, self.b).block_until_ready()
        self.n, self.dtype, self.flops, self.times = n, dtype, 2.0 * n**3, []

    def __call__(self) -> float:
        t0 = time.perf_counter()
        self.fn(self.a, self.b).block_until_ready()
        self.times.append(time.perf_counter() - t0)
        return self.times[-1]

    @property
    def flops_per_s(self) -> float:
        return self.flops / float(np.median(self.times))


def matmul_peak(n: int, reps: int = 7, dtype: str = "float32") -> dict[str, float]:
    """Throughput of an ``[n, n] @ [n, n]`` matmul (default precision) on the default device."""
    probe = MatmulProbe(n, dtype)
    for _ in range(reps):
        probe()
    t = float(np.median(probe.times))
    return {"n": n, "dtype": dtype, "median_s": t, "flops": probe.flops, "gflops_per_s": probe.flops / t / 1e9}


def timed_steps(step: Callable, state, batch, warmup: int, steps: int, probe: MatmulProbe | None = None,
                probe_every: int = 4) -> tuple[Any, np.ndarray]:
    """Runs ``warmup`` then ``steps`` steps, each synchronised; returns (state, seconds per step).

    With ``probe``, a matmul is timed before the first timed step and after every ``probe_every``
    steps, so the peak it measures saw the same contention as the steps.
    """
    for _ in range(warmup):
        state, metrics = step(state, batch)
    jax.block_until_ready(state)
    times = []
    for i in range(steps):
        if probe is not None and i % probe_every == 0:
            probe()
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    return state, np.asarray(times)


def time_calls(fn: Callable, budget_s: float = 1.0, probe: MatmulProbe | None = None) -> tuple[float, float]:
    """``(first call s, median later call s)`` of ``fn(key)``, each call synchronised; 3 to 50 later
    calls, as many as fit in about ``budget_s``. With ``probe``, the matmul is timed (on its own)
    before every later call."""
    times = []
    for i in range(51):
        if probe is not None and i:
            probe()
        t0 = time.perf_counter()
        jax.block_until_ready(fn(jax.random.key(2 + i)))
        times.append(time.perf_counter() - t0)
        if len(times) >= 4 and sum(times[1:]) > budget_s:
            break
    return times[0], float(np.median(times[1:]))


def summarize(times: np.ndarray) -> dict[str, float]:
    q25, q50, q75 = np.percentile(times, [25, 50, 75])
    return {"median_s": float(q50), "iqr_s": float(q75 - q25), "min_s": float(np.min(times)),
            "n_timed": int(len(times))}


def fractions(flops: float, step_s: float, probe: MatmulProbe, run_peak_flops: float) -> dict[str, float]:
    """Achieved FLOP/s, as a fraction of the interleaved matmul's throughput (``peak_fraction``) and
    of the run's matmul peak (``peak_fraction_run``)."""
    achieved = flops / step_s
    return {"gflops_per_s": achieved / 1e9, "peak_fraction": achieved / probe.flops_per_s,
            "peak_fraction_run": achieved / run_peak_flops}


def aot_compile(fn: Callable, *args) -> tuple[Any, dict[str, float]]:
    """Compiles ``fn(*args)`` through the AOT API; returns (compiled, phase times in seconds)."""
    t0 = time.perf_counter()
    traced = fn.trace(*args)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    return compiled, {"trace_s": t1 - t0, "lower_s": t2 - t1, "compile_s": t3 - t2, "total_s": t3 - t0}


def jittable(fn: Callable) -> Callable:
    """``fn`` if it is already jitted (has the AOT ``trace``), else ``jax.jit(fn)``."""
    return fn if hasattr(fn, "trace") else jax.jit(fn)


def placed(state, host_batch):
    """``(state, batch)`` on a one-device mesh, placed as the runner places them (state replicated,
    batch sharded along the ``'data'`` axis), so every program here compiles once for one placement."""
    from gen_jax.train import make_mesh, replicate, shard_batch

    mesh = make_mesh(jax.devices()[:1])
    return replicate(state, mesh), shard_batch(host_batch, mesh)


def process_peak_memory() -> dict[str, int]:
    """The device's peak bytes in use if the backend reports it, else the process's peak RSS."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return {"device_peak_bytes": int(stats["peak_bytes_in_use"])}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss_peak_bytes": int(rss * (1 if sys.platform == "darwin" else 1024))}
