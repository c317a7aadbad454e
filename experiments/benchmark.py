"""Benchmark of the compiled train steps of every family; writes JSON + markdown tables.

``python -m experiments.benchmark [--suite smoke|standard|gpu] [--family flow,diffusion,vae,gan]
[--configs NAME,...] [--skip SECTION,...] [--out DIR]`` writes ``DIR/benchmark.json`` (environment
+ one record per measurement), ``DIR/benchmark.md`` (tables; also printed) and
``DIR/architectures.md`` (each model's parameters, module by module). See experiments/BENCHMARKS.md.

Every model is built the way a run builds it: the family's own experiment config
(``experiments/configs/<name>.py``) through ``experiments.run.build_task(config, DataSpec(...))``,
fed synthetic batches of the real shapes (toy: samples of the toy distribution; images: random uint8
pixels and int32 labels; ``tfds.testing.mock_data`` for families that initialise from data), so no
dataset is needed. Per config:

* parameter count (``jax.eval_shape`` of the task's init: no compute);
* compile time of the task's ``train_step`` through the AOT API (``trace``, ``lower``, ``compile``),
  cold, then warm from JAX's persistent compilation cache after ``jax.clear_caches()``;
* steady-state step time: median and IQR over timed steps after warm-up, each step synchronised
  with ``block_until_ready``; examples/s;
* FLOPs per step from XLA's cost analysis of the compiled step, achieved FLOP/s, and that as a
  fraction of the throughput of a large f32 matmul timed in between the steps (same device, same
  contention) and of the run's best matmul;
* memory: XLA's buffer assignment of the step (arguments + outputs + temporaries - aliased), and the
  device's peak bytes in use where the backend reports it (else the process's peak RSS);
* a loop check: steps of ``gen_jax.train.fit`` under ``jax.log_compiles`` and
  ``jax.transfer_guard('disallow')``: no trace, no compilation, no implicit transfer, no per-step
  host sync.

Across configs (``--skip`` leaves sections out): jit vs op-by-op (``jax.disable_jit``); vmap over K
seeds vs K sequential runs (toy); batch-size scaling; data parallelism over N devices (subprocesses
with N forced host devices on CPU); state donation on/off; XLA flags (subprocesses); single
convolution layers of the kinds the conv configs use; DDPM vs DDIM sampling and each compiled
sampler vs steps x one denoiser call (diffusion). Families whose task does not import are skipped
with a note; a measurement that fails becomes an error record, not a crash.

Timings on a shared machine are noisy: compare ratios measured within one run, not across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib
import json
import logging
import math
import os
import pkgutil
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable

import numpy as np

FAMILY_ORDER = ("flow", "diffusion", "vae", "gan")
SIZE_ORDER = ("toy", "mnist", "cifar")
# data name -> (size class, example shape, classes, training examples); toy data are size 'toy'
IMAGE_DATA = {
    "mnist": ("mnist", (28, 28, 1), 10, 60_000),
    "fashion_mnist": ("mnist", (28, 28, 1), 10, 60_000),
    "cifar10": ("cifar", (32, 32, 3), 10, 50_000),
}
# Which config stands for a (family, size) when several exist: first match wins, then alphabetical.
PREFERRED_CONFIGS = ("realnvp_toy", "ddpm_toy", "vae_toy", "gan_ring8")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
TARGETS = {
    "conv_peak_fraction": 0.60,  # conv configs at batch 128 on CPU, of the measured matmul peak
    "sampler_overhead": 1.10,  # compiled sampler time / (steps x one denoiser call)
    "vmap8_speedup": 4.0,  # 8 seeds with vmap vs 8 sequential runs, toy configs
}


@dataclasses.dataclass(frozen=True)
class Suite:
    """What one suite measures and how long it may take.

    Attributes:
      name: suite name.
      config_arg: argument passed to every ``get_config`` (``'smoke'`` shrinks the models).
      measure_sizes: size classes whose train steps are compiled and timed.
      describe_sizes: size classes whose parameter count and FLOPs (from the lowered, unoptimised
        HLO) are reported without compiling (models too big to time on this platform).
      batch_size: batch per size class (0: the config's own batch size).
      warmup: untimed steps before timing.
      steps: timed steps (median and IQR over them).
      matmul_n: side of the square f32 matmul whose throughput is the peak.
      op_by_op_steps: steps timed without jit (first toy config).
      vmap_seeds: K values for vmap over seeds (toy configs).
      scaling_batches: batch sizes per size class for batch-size scaling (one config per class).
      dp_devices: device counts for data parallelism (subprocesses).
      dp_sizes: size classes measured data-parallel (one config per class).
      loop_steps: steps of ``fit`` under the no-retrace / no-transfer check.
      ddim_steps: DDIM sampler steps (DDPM uses all T steps of the config's schedule).
      sample_n: samples per sampler call, per size class.
      ddpm_sizes: size classes on which the full DDPM chain is timed (it costs T denoiser calls).
      tuning_sizes: size classes whose chosen config is timed with and without state donation and
        under each of ``flag_variants``.
      flag_variants: extra ``XLA_FLAGS`` strings, each timed in a fresh subprocess.
      kernel_batch: batch of the single-layer (convolution kind) measurements; 0 skips them.
      section_steps: timed steps of batch scaling, data parallelism and XLA flags (twice that for
        donation); they time the cheapest config of a size class (fastest step in the main table).
    """

    name: str
    config_arg: str | None
    measure_sizes: tuple[str, ...]
    describe_sizes: tuple[str, ...]
    batch_size: dict[str, int]
    warmup: int
    steps: int
    matmul_n: int
    op_by_op_steps: int
    vmap_seeds: tuple[int, ...]
    scaling_batches: dict[str, tuple[int, ...]]
    dp_devices: tuple[int, ...]
    dp_sizes: tuple[str, ...]
    loop_steps: int
    ddim_steps: int
    sample_n: dict[str, int]
    ddpm_sizes: tuple[str, ...]
    tuning_sizes: tuple[str, ...] = ()
    flag_variants: tuple[str, ...] = ()
    kernel_batch: int = 0
    section_steps: int = 5


CPU_FLAG_VARIANTS = (
    "--xla_cpu_use_thunk_runtime=false",  # the older whole-program LLVM runtime
    "--xla_cpu_multi_thread_eigen=false",  # one thread for Eigen dots/convs (a control: should be slower)
)

SUITES = {
    "smoke": Suite(
        name="smoke", config_arg="smoke", measure_sizes=("toy",), describe_sizes=(),
        batch_size={"toy": 64}, warmup=1, steps=5, matmul_n=512, op_by_op_steps=0,
        vmap_seeds=(1, 2), scaling_batches={"toy": (32, 64)}, dp_devices=(2,), dp_sizes=("toy",),
        loop_steps=3, ddim_steps=5, sample_n={"toy": 64}, ddpm_sizes=("toy",), tuning_sizes=("toy",)),
    "standard": Suite(
        name="standard", config_arg=None, measure_sizes=("toy", "mnist"), describe_sizes=("cifar",),
        batch_size={"toy": 0, "mnist": 128}, warmup=3, steps=20, matmul_n=2048, op_by_op_steps=5,
        vmap_seeds=(1, 4, 8), scaling_batches={"toy": (64, 256, 1024, 4096), "mnist": (32, 64, 128, 256)},
        dp_devices=(1, 2, 4), dp_sizes=("mnist",), loop_steps=5, ddim_steps=50,
        sample_n={"toy": 1000, "mnist": 16}, ddpm_sizes=("toy",), tuning_sizes=("mnist",),
        flag_variants=CPU_FLAG_VARIANTS, kernel_batch=128),
    "gpu": Suite(
        name="gpu", config_arg=None, measure_sizes=("toy", "mnist", "cifar"), describe_sizes=(),
        batch_size={"toy": 1024, "mnist": 256, "cifar": 128}, warmup=5, steps=50, matmul_n=8192,
        op_by_op_steps=5, vmap_seeds=(1, 4, 8),
        scaling_batches={"toy": (256, 1024, 4096, 16384), "mnist": (64, 128, 256, 512),
                         "cifar": (32, 64, 128, 256)},
        dp_devices=(1, 2, 4, 8), dp_sizes=("cifar",), loop_steps=10, ddim_steps=50,
        sample_n={"toy": 10_000, "mnist": 64, "cifar": 64}, ddpm_sizes=("toy", "mnist", "cifar"),
        tuning_sizes=("cifar",), kernel_batch=128, section_steps=20),
}


# --------------------------------------------------------------------------------------------------
# JAX setup (must run before the first compilation of the process)


def configure_jax(cache_dir: str) -> None:
    """Turns on the persistent compilation cache in ``cache_dir`` for every compiled program."""
    import jax

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
        import jax

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


# --------------------------------------------------------------------------------------------------
# Configs and tasks


@dataclasses.dataclass(frozen=True)
class Entry:
    """One benchmarked config: its spec (module name [overrides], see :func:`load_config`), the
    loaded config, its family and size class."""

    name: str
    config: Any
    family: str
    size: str


def data_spec(config):
    """The ``DataSpec`` of a config's data, without loading any dataset."""
    from experiments.tasks.base import DataSpec
    from gen_jax.data import toy as toy_data

    name = config.data.name
    if name in toy_data.TOY_DATASETS:
        return DataSpec(kind="toy", shape=(2,), name=name, toy=toy_data.get_toy(name))
    if name not in IMAGE_DATA:
        raise ValueError(f"config data.name={name!r} is neither a toy dataset nor one of {sorted(IMAGE_DATA)}")
    _, shape, classes, num_train = IMAGE_DATA[name]
    return DataSpec(kind="image", shape=shape, name=name, num_classes=classes, num_train=num_train)


def size_class(config) -> str:
    from gen_jax.data import toy as toy_data

    name = config.data.name
    return "toy" if name in toy_data.TOY_DATASETS else IMAGE_DATA.get(name, ("other",))[0]


def discover(families: tuple[str, ...], config_arg: str | None, names: tuple[str, ...] = ()
             ) -> tuple[list[Entry], list[dict]]:
    """Loads every config of ``experiments/configs`` (or only ``names``) of the given families.

    Returns:
      ``(entries, skipped)``: one entry per (family, size class) — or every named config — and a
      record per family or config that could not be loaded or built, with the reason.
    """
    import experiments.configs

    from experiments.run import FAMILIES

    skipped, by_group = [], {}
    for family in families:
        try:
            importlib.import_module(FAMILIES[family])
        except Exception as e:  # an unfinished family: any import error means "skip it"
            skipped.append({"kind": "skipped", "family": family, "config": "-",
                            "reason": f"task module {FAMILIES[family]} not importable: {type(e).__name__}: {e}"})
    available = [m.name for m in pkgutil.iter_modules(experiments.configs.__path__) if m.name != "common"]
    for name in names or sorted(available):
        try:
            config = load_config(name, config_arg)
        except Exception as e:
            skipped.append({"kind": "skipped", "family": "?", "config": name,
                            "reason": f"get_config({config_arg!r}) failed: {type(e).__name__}: {e}"})
            continue
        if config.family not in families or any(s["family"] == config.family for s in skipped):
            continue
        by_group.setdefault((config.family, size_class(config)), []).append(Entry(name, config, config.family,
                                                                                  size_class(config)))
    entries = []
    for (family, size), group in sorted(by_group.items(), key=lambda kv: (
            FAMILY_ORDER.index(kv[0][0]), SIZE_ORDER.index(kv[0][1]) if kv[0][1] in SIZE_ORDER else 9)):
        if names:
            entries.extend(group)
            continue
        group.sort(key=lambda e: (e.name not in PREFERRED_CONFIGS, e.name))
        entries.append(group[0])
    return entries, skipped


def without_dataset(entry: Entry):
    """A context in which the task of ``entry`` can be built and initialised with no dataset on disk:
    for image configs, ``tfds.testing.mock_data`` stands in for the training split (families that
    initialise from data, e.g. flows' ActNorm, then see random uint8 images of the right shape)."""
    if entry.size == "toy":
        return contextlib.nullcontext()
    import tensorflow_datasets as tfds

    return tfds.testing.mock_data(num_examples=64)


def load_config(spec: str, config_arg: str | None):
    """The config named by ``spec``: a module of ``experiments/configs``, optionally followed by
    overrides in brackets, ``'dcgan_mnist[model.d_downsample=space_to_depth,optim.learning_rate=1e-4]'``,
    so that a variant can be timed next to its base in one run. Values are Python literals, else
    strings; the config's types are enforced on assignment."""
    import ast

    name, _, rest = spec.partition("[")
    config = importlib.import_module(f"experiments.configs.{name.strip()}").get_config(config_arg)
    if not rest:
        return config
    if not rest.endswith("]"):
        raise ValueError(f"config spec {spec!r}: expected 'name[key=value,...]'")
    updates = {}
    for item in filter(None, (s.strip() for s in rest[:-1].split(","))):
        key, eq, raw = item.partition("=")
        if not eq:
            raise ValueError(f"config spec {spec!r}: override {item!r} is not key=value")
        try:
            updates[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            updates[key.strip()] = raw.strip()
    return with_overrides(config, **updates)


def split_specs(text: str) -> tuple[str, ...]:
    """``'a,b[x=1,y=2];c'`` -> ``('a', 'b[x=1,y=2]', 'c')``: commas inside brackets stay."""
    specs, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch in ",;" and depth == 0:
            specs.append(cur)
            cur = ""
        else:
            cur += ch
    return tuple(s.strip() for s in specs + [cur] if s.strip())


def with_overrides(config, **updates):
    """A copy of ``config`` with dotted keys replaced (``{'data.batch_size': 64}``)."""
    config = copy.deepcopy(config)
    with config.unlocked():
        for key, value in updates.items():
            node = config
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
    return config


def build(entry: Entry, batch_size: int, num_seeds: int = 1):
    """``(task, data_spec)`` of ``entry`` with the given batch size and number of seeds."""
    from experiments.run import build_task

    config = with_overrides(entry.config, **{"data.batch_size": batch_size, "num_seeds": num_seeds})
    data = data_spec(config)
    return build_task(config, data), data


def synthetic_batch(data, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A host batch of the real structure: toy ``{'x': f32 [B, 2]}`` drawn from the toy distribution;
    images ``{'x': u8 [B, H, W, C], 'label': i32 [B]}`` of uniform random pixels and labels."""
    import jax

    if data.kind == "toy":
        sample = jax.jit(data.toy.sample, static_argnums=1)
        return {"x": np.asarray(jax.device_get(sample(jax.random.key(seed), batch_size)), np.float32)}
    rng = np.random.default_rng(seed)
    return {"x": rng.integers(0, 256, size=(batch_size, *data.shape), dtype=np.uint8),
            "label": rng.integers(0, max(data.num_classes, 1), size=(batch_size,), dtype=np.int32)}


def batch_for(entry: Entry, suite: Suite) -> int:
    return suite.batch_size.get(entry.size) or entry.config.data.batch_size


def param_counts(state) -> dict[str, int]:
    """Trainable parameter count of a (possibly abstract) state: ``{'params': n}`` or per player."""
    import jax

    def count(tree):
        return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))

    if hasattr(state, "g") and hasattr(state, "d"):
        return {"G": count(state.g.params), "D": count(state.d.params)}
    return {"params": count(state.params)}


def layer_table(params, depth: int = 2) -> list[tuple[str, str, int]]:
    """``(module path, leaf shapes, count)`` per module at ``depth`` of a params pytree: the
    architecture layer by layer, as the parameters show it."""
    import jax

    rows: dict[str, list] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        module = "/".join(names[:-1][:depth]) or "-"
        rows.setdefault(module, []).append((names[-1] if len(names) <= depth + 1 else "/".join(names[depth:]),
                                            tuple(leaf.shape)))
    return [(m, ", ".join(f"{n}{list(s)}" for n, s in leaves), sum(math.prod(s) for _, s in leaves))
            for m, leaves in rows.items()]


# --------------------------------------------------------------------------------------------------
# Measurements


def timed_steps(step: Callable, state, batch, warmup: int, steps: int, probe: "MatmulProbe | None" = None,
                probe_every: int = 4) -> tuple[Any, np.ndarray]:
    """Runs ``warmup`` then ``steps`` steps, each synchronised; returns (state, seconds per step).

    With ``probe``, a matmul is timed before the first timed step and after every ``probe_every``
    steps, so the peak it measures saw the same contention as the steps.
    """
    import jax

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


class MatmulProbe:
    """An ``[n, n] @ [n, n]`` matmul (default precision) timed in between train steps: the device's
    peak under the same load as the steps, the denominator of the fraction of peak."""

    def __init__(self, n: int, dtype: str = "float32"):
        import jax
        import jax.numpy as jnp

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


def summarize(times: np.ndarray) -> dict[str, float]:
    q25, q50, q75 = np.percentile(times, [25, 50, 75])
    return {"median_s": float(q50), "iqr_s": float(q75 - q25), "min_s": float(np.min(times)),
            "n_timed": int(len(times))}


def matmul_peak(n: int, reps: int = 7, dtype: str = "float32") -> dict[str, float]:
    """Throughput of an ``[n, n] @ [n, n]`` matmul (default precision) on the default device."""
    probe = MatmulProbe(n, dtype)
    for _ in range(reps):
        probe()
    t = float(np.median(probe.times))
    return {"n": n, "dtype": dtype, "median_s": t, "flops": probe.flops, "gflops_per_s": probe.flops / t / 1e9}


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
    import jax

    return fn if hasattr(fn, "trace") else jax.jit(fn)


def flops_of(cost: Any) -> float | None:
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def hlo_computations(hlo_text: str) -> dict[str, str]:
    """``{computation name: its text}`` of an HLO module."""
    blocks = re.split(r"\n(?=(?:ENTRY )?%[\w.\-]+ )", hlo_text)
    return {m.group(1): b for b in blocks if (m := re.match(r"(?:ENTRY )?%([\w.\-]+) ", b))}


def loops_with_matmuls(hlo_text: str) -> int:
    """Number of while loops in an HLO module whose body (transitively) holds a dot or convolution.

    XLA's cost analysis counts a while body once whatever its trip count, so with such loops (e.g. a
    ``lax.scan`` over D updates) the reported FLOPs are a lower bound. PRNG loops (threefry) carry no
    dot and do not count.
    """
    comps = hlo_computations(hlo_text)

    def has_matmul(name: str, seen: set) -> bool:
        if name in seen or name not in comps:
            return False
        seen.add(name)
        body = comps[name]
        if re.search(r"\b(dot|convolution)\(", body):
            return True
        return any(has_matmul(c, seen) for c in re.findall(r"(?:calls|to_apply|body|condition|branch_computations)="
                                                             r"\{?%([\w.\-]+)", body))

    return sum(has_matmul(b, set()) for b in re.findall(r"\bwhile\(.*?body=%([\w.\-]+)", hlo_text))


def memory_of(compiled) -> dict[str, int]:
    """XLA's buffer assignment of a compiled program, in bytes."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return {}
    if m is None:
        return {}
    out = {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
           "temp_bytes": int(m.temp_size_in_bytes), "alias_bytes": int(m.alias_size_in_bytes)}
    out["xla_total_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    return out


def process_peak_memory() -> dict[str, int]:
    """The device's peak bytes in use if the backend reports it, else the process's peak RSS."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return {"device_peak_bytes": int(stats["peak_bytes_in_use"])}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss_peak_bytes": int(rss * (1 if sys.platform == "darwin" else 1024))}


def placed(state, host_batch):
    """``(state, batch)`` on a one-device mesh, placed as the runner places them (state replicated,
    batch sharded along the ``'data'`` axis), so every program here compiles once for one placement."""
    import jax

    from gen_jax.train import make_mesh, replicate, shard_batch

    mesh = make_mesh(jax.devices()[:1])
    return replicate(state, mesh), shard_batch(host_batch, mesh)


def jitted_init(task) -> Callable:
    """The task's ``init`` under ``jax.jit`` (one compilation instead of many eager ops; every state
    it returns shares one static optimizer object, so states of different seeds stack)."""
    import jax

    return jax.jit(task.init)


def hlo_instructions(hlo_text: str) -> dict[str, tuple[str, str, str]]:
    """``{instruction name: (opcode, source op_name from its metadata, body)}`` of a compiled HLO
    module; ``body`` is the text of the computation a fusion calls ('' for other instructions)."""
    comps = hlo_computations(hlo_text)
    out = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .+? ([\w\-]+)\(", line)
        if m:
            meta = re.search(r'op_name="([^"]+)"', line)
            called = re.search(r"calls=%([\w.\-]+)", line)
            body = comps.get(called.group(1), "") if called and m.group(2) == "fusion" else ""
            out[m.group(1)] = (m.group(2), meta.group(1) if meta else "", body)
    return out


def profile_ops(step: Callable, state, batch, hlo_text: str, steps: int = 2, top: int = 8) -> tuple[Any, dict]:
    """Runs ``steps`` steps under ``jax.profiler`` and attributes the time to the step's HLO
    instructions (events named like an instruction of ``hlo_text``; device planes when there are any,
    else the host's XLA threads). Returns ``(state, {"ops": [...top ops...], "covered": fraction})``:
    each op with its time per step, share of the step, opcode and the source op it came from
    (``transpose(jvp(...))`` marks a backward pass)."""
    import jax
    from jax.profiler import ProfileData

    names = hlo_instructions(hlo_text)
    with tempfile.TemporaryDirectory(prefix="gen_jax_profile_") as trace_dir:
        jax.block_until_ready(state)
        with jax.profiler.trace(trace_dir):
            t0 = time.perf_counter()  # inside: the profiler's own start and stop are not the step's time
            for _ in range(steps):
                state, metrics = step(state, batch)
            jax.block_until_ready((state, metrics))
            wall = (time.perf_counter() - t0) / steps
        files = [os.path.join(d, f) for d, _, fs in os.walk(trace_dir) for f in fs if f.endswith(".xplane.pb")]
        totals: dict[str, float] = {}
        if files:
            planes = list(ProfileData.from_file(files[0]).planes)
            device = [pl for pl in planes if pl.name.startswith("/device:")]
            for plane in device or planes:
                for line in plane.lines:
                    for ev in line.events:
                        if ev.name in names:
                            totals[ev.name] = totals.get(ev.name, 0.0) + ev.duration_ns * 1e-9 / steps
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    ops = [{"op": name, "opcode": names[name][0], "source": names[name][1] or _fused_source(names[name][2]),
            "s_per_step": secs,
            "fraction": secs / wall} for name, secs in ranked[:top]]
    kinds: dict[str, float] = {}
    for name, secs in totals.items():
        kind = op_kind(name, *names[name])
        kinds[kind] = kinds.get(kind, 0.0) + secs / wall
    return state, {"ops": ops, "covered": sum(totals.values()) / wall, "profiled_step_s": wall,
                   "by_kind": dict(sorted(kinds.items(), key=lambda kv: -kv[1]))}


OP_KINDS = ("convolution", "matmul", "layout (copy/transpose)", "reduction", "element-wise / other")


def _fused_source(body: str) -> str:
    """The source op of the first convolution or dot inside a fusion's body, else ''."""
    m = re.search(r"(?:convolution|dot)\(.*?op_name=\"([^\"]+)\"", body)
    return m.group(1) if m else ""


def op_kind(name: str, opcode: str, source: str, body: str = "") -> str:
    """One of ``OP_KINDS`` for an HLO instruction: a fusion that contains a convolution (dot) counts as
    one; other fusions are classed by their JAX source op or by the kinds XLA names them after."""
    if opcode == "convolution" or source.endswith("conv_general_dilated") or re.search(r"\bconvolution\(", body):
        return "convolution"
    if opcode == "dot" or source.endswith("dot_general") or re.search(r"\bdot\(", body):
        return "matmul"
    if opcode in ("copy", "transpose") or "copy" in name or "transpose" in name:
        return "layout (copy/transpose)"
    if opcode == "reduce" or "reduce" in name or source.endswith(("reduce_sum", "reduce_max")):
        return "reduction"
    return "element-wise / other"


def measure_config(entry: Entry, suite: Suite, peak_flops: float, warm_cache: bool) -> list[dict]:
    """Compile (cold, warm), step time, FLOPs, memory and the loop check of one config."""
    import jax

    batch_size = batch_for(entry, suite)
    task, data = build(entry, batch_size)
    base = {"family": entry.family, "config": entry.name, "size": entry.size, "batch": batch_size}
    key = jax.random.key(0)
    abstract = jax.eval_shape(task.init, key)
    records = [dict(base, kind="params", **param_counts(abstract))]
    state, batch = placed(jitted_init(task)(key), synthetic_batch(data, batch_size))
    step = jittable(task.train_step)

    with CompileEvents() as cold_events:
        compiled, cold = aot_compile(step, state, batch)
    rec = dict(base, kind="compile", cold_total_s=cold["total_s"], cold_trace_s=cold["trace_s"],
               cold_lower_s=cold["lower_s"], cold_compile_s=cold["compile_s"])
    if warm_cache:
        jax.clear_caches()
        with CompileEvents() as warm_events:
            compiled, warm = aot_compile(step, state, batch)
        rec.update(warm_total_s=warm["total_s"], warm_trace_s=warm["trace_s"], warm_lower_s=warm["lower_s"],
                   warm_compile_s=warm["compile_s"], warm_cache_hits=warm_events.cache_hits,
                   cold_cache_hits=cold_events.cache_hits)
    records.append(rec)

    flops = flops_of(compiled.cost_analysis())
    matmul_loops = loops_with_matmuls(compiled.as_text())
    memory = memory_of(compiled)
    probe = MatmulProbe(suite.matmul_n)
    state, times = timed_steps(task.train_step, state, batch, suite.warmup, suite.steps, probe)
    stats = summarize(times)
    rec = dict(base, kind="step", **stats, examples_per_s=batch_size / stats["median_s"], flops=flops,
               flops_lower_bound=matmul_loops > 0, local_peak_gflops_per_s=probe.flops_per_s / 1e9)
    if flops:
        rec.update(_fractions(flops, stats["median_s"], probe, peak_flops))
    records.append(dict(rec, **memory, **process_peak_memory()))
    state, prof = profile_ops(task.train_step, state, batch, compiled.as_text())
    records.append(dict(base, kind="profile", **prof))
    records.append(dict(base, kind="loop_check", **loop_check(task, state, batch, suite.loop_steps, stats["median_s"]),
                        data_source_transfers=data_source_transfers(data, batch_size)))
    return records


def _fractions(flops: float, step_s: float, probe: MatmulProbe, run_peak_flops: float) -> dict[str, float]:
    """Achieved FLOP/s, as a fraction of the interleaved matmul's throughput (``peak_fraction``) and
    of the run's matmul peak (``peak_fraction_run``)."""
    achieved = flops / step_s
    return {"gflops_per_s": achieved / 1e9, "peak_fraction": achieved / probe.flops_per_s,
            "peak_fraction_run": achieved / run_peak_flops}


def describe_config(entry: Entry, suite: Suite) -> list[dict]:
    """Parameter count and FLOPs of the lowered (unoptimised) step, without compiling it."""
    import jax

    batch_size = batch_for(entry, suite) if entry.size in suite.batch_size else 128
    task, data = build(entry, batch_size)
    base = {"family": entry.family, "config": entry.name, "size": entry.size, "batch": batch_size}
    abstract = jax.eval_shape(task.init, jax.random.key(0))
    batch = synthetic_batch(data, batch_size)
    abstract_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
    t0 = time.perf_counter()
    lowered = jittable(task.train_step).trace(abstract, abstract_batch).lower()
    lower_s = time.perf_counter() - t0
    return [dict(base, kind="params", **param_counts(abstract)),
            dict(base, kind="lowered", flops_hlo=flops_of(lowered.cost_analysis()), trace_lower_s=lower_s)]


def loop_check(task, state, batch, steps: int, step_s: float | None = None) -> dict:
    """Runs ``gen_jax.train.fit`` for ``steps`` steps (after a 2-step warm-up ``fit``), counting traces
    and compilations and refusing implicit host<->device transfers.

    The batches are host copies of ``batch`` drawn before the guarded region and placed by ``fit``'s
    ``put_batch`` (``shard_batch`` onto ``batch``'s mesh), so the check covers the loop — placement,
    step, metric logging — not the data source, which is checked on its own
    (:func:`data_source_transfers`).

    On CPU, reading a device array on the host (``float(x)``, ``np.asarray(x)``) is zero-copy and
    passes the transfer guard, so a per-step host sync is also looked for by timing: without one,
    the loop asks for the next batch (``put_batch``) right after dispatching a step, long before the
    device has finished it; with one, consecutive ``put_batch`` calls are at least a step apart.
    ``runs_ahead`` is "the shortest gap is under half a step"; it is judged only when a step takes
    >= 5 ms (``step_s``), so that dispatch overhead cannot pass for a sync.
    """
    import jax

    from gen_jax.train import fit, shard_batch

    mesh = jax.tree.leaves(batch)[0].sharding.mesh
    host = jax.device_get(batch)
    start = int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])
    stamps: list[float] = []

    def batches(first):
        del first
        return iter([host] * (steps + 2))

    def put_batch(b):
        stamps.append(time.perf_counter())
        return shard_batch(b, mesh)

    kwargs = dict(workdir=None, checkpointer=None, progress=False, put_batch=put_batch)
    state, _ = fit(state, task.train_step, batches, num_steps=start + 2, log_every=2, **kwargs)
    jax.block_until_ready(state)
    error, stamps[:] = None, []
    with CompileEvents(log_compiles=True) as events:
        try:
            with jax.transfer_guard("disallow"):
                state, _ = fit(state, task.train_step, batches, num_steps=start + 2 + steps, log_every=steps,
                               **kwargs)
                jax.block_until_ready(state)
        except Exception as e:  # a disallowed transfer raises from inside the loop
            error = _first_line(e)
    end = time.perf_counter()
    out = {"steps": steps, "traces": events.traces, "compiles": events.compiles,
           "log_compiles_messages": len([m for m in events.messages if m.startswith("Compiling")]),
           "transfer_guard_ok": error is None, "transfer_error": error}
    if len(stamps) == steps and steps >= 2:
        # A per-step host sync makes every gap between two dispatches at least a step long; without one
        # the loop dispatches the next step at once (until the runtime's bounded queue fills up).
        out["dispatch_gap_min_s"], out["loop_wall_s"] = float(np.min(np.diff(stamps))), end - stamps[0]
        judged = step_s is not None and step_s >= 5e-3
        out["runs_ahead"] = out["dispatch_gap_min_s"] < 0.5 * step_s if judged else None
        out["step_s"] = step_s
    out["ok"] = (error is None and events.traces == 0 and events.compiles == 0
                 and out.get("runs_ahead") is not False)
    return out


def _first_line(e: Exception, limit: int = 160) -> str:
    """A short description of an exception (a disallowed transfer as 'implicit <dir> transfer of <aval>')."""
    text = (str(e).splitlines() or [""])[0]
    m = re.search(r"Disallowed (\S+) transfer: aval=ShapedArray\(([^)]*)\)", text)
    if m:
        return f"implicit {m.group(1)} transfer of {m.group(2)}"
    return f"{type(e).__name__}: {text[:limit]}"


def data_source_transfers(data, batch_size: int) -> str:
    """Whether the run's real batch source makes implicit transfers (``'none'`` or the error)."""
    import jax

    from gen_jax.data import images as image_data
    from gen_jax.data import toy as toy_data

    if data.kind == "toy":
        source = toy_data.ToyBatches(data.toy, batch_size)
    else:
        host = synthetic_batch(data, 2 * batch_size)
        source = image_data.ImageBatches(host["x"], host["label"], batch_size, seed=0)
    source.batch_at(0)  # compile outside the guard
    try:
        with jax.transfer_guard("disallow"):
            source.batch_at(1)
    except Exception as e:
        return _first_line(e, 100)
    return "none"


def measure_op_by_op(entry: Entry, suite: Suite) -> dict:
    """jit vs op-by-op (``jax.disable_jit``) step time of one config."""
    import jax

    batch_size = batch_for(entry, suite)
    task, data = build(entry, batch_size)
    init = jitted_init(task)
    state, batch = placed(init(jax.random.key(0)), synthetic_batch(data, batch_size))
    state, jit_times = timed_steps(task.train_step, state, batch, suite.warmup, max(suite.steps, 5))
    state, _ = placed(init(jax.random.key(0)), {})
    with jax.disable_jit():
        state, eager_times = timed_steps(task.train_step, state, batch, 1, suite.op_by_op_steps)
    jit_s, eager_s = float(np.median(jit_times)), float(np.median(eager_times))
    return {"kind": "op_by_op", "family": entry.family, "config": entry.name, "size": entry.size,
            "batch": batch_size, "jit_median_s": jit_s, "op_by_op_median_s": eager_s,
            "op_by_op_n_timed": len(eager_times), "speedup": eager_s / jit_s}


def replicated_task(entry: Entry, batch_size: int, k: int):
    """``(init_k, step_k, method)``: K seeds in one program. Uses the family's ``num_seeds`` support
    when its state gets a leading replica axis, else stacks K states and vmaps the task's step."""
    import jax
    import jax.numpy as jnp

    try:
        task, _ = build(entry, batch_size, num_seeds=k)
        steps = jax.eval_shape(task.init, jax.random.key(0)).step
        if k == 1 or tuple(steps.shape) == (k,):
            return jitted_init(task), task.train_step, "config.num_seeds"
    except Exception:  # the family does not support num_seeds > 1: fall back to vmap below
        pass
    task, _ = build(entry, batch_size)
    init = jitted_init(task)

    def init_k(key):
        states = [init(kk) for kk in jax.random.split(key, k)]
        leaves = [jax.tree.leaves(s) for s in states]
        return jax.tree.unflatten(jax.tree.structure(states[0]), [jnp.stack(xs) for xs in zip(*leaves)])

    step_k = jax.jit(jax.vmap(task.train_step, in_axes=(0, None)), donate_argnums=(0,))
    return init_k, step_k, "vmap(task.train_step)"


def measure_vmap(entry: Entry, suite: Suite) -> list[dict]:
    """Step time of K seeds in one vmapped program vs K sequential single-seed runs, and, for
    reference, one seed at batch K x B: the same arithmetic as one program with K times the rows and
    one set of weights, which is what batching seeds can hope to approach."""
    import jax

    batch_size = batch_for(entry, suite)
    _, data = build(entry, batch_size)
    host = synthetic_batch(data, batch_size)
    single = ceiling = None
    records = []
    for k in (1,) + tuple(x for x in suite.vmap_seeds if x != 1):
        init_k, step_k, method = replicated_task(entry, batch_size, k)
        state, batch = placed(init_k(jax.random.key(0)), host)
        flops = flops_of(jittable(step_k).lower(state, batch).compile().cost_analysis())
        probe = MatmulProbe(suite.matmul_n)
        state, times = timed_steps(step_k, state, batch, suite.warmup, suite.steps, probe)
        t = float(np.median(times))
        single = t if k == 1 else single
        rec = {"kind": "vmap", "family": entry.family, "config": entry.name, "size": entry.size,
               "batch": batch_size, "seeds": k, "method": method, "median_s": t,
               "iqr_s": float(np.subtract(*np.percentile(times, [75, 25]))), "flops": flops,
               "sequential_s": k * single, "speedup_vs_sequential": k * single / t}
        if flops:
            rec["peak_fraction"] = flops / t / probe.flops_per_s
            if k == 1:  # K seeds cost K times the FLOPs: at best the step runs at the matmul peak
                ceiling = 1.0 / rec["peak_fraction"]
        if ceiling is not None:
            rec["speedup_ceiling"] = ceiling
        if k > 1:
            wide_task, wide_data = build(entry, k * batch_size)
            wide_state, wide_batch = placed(jitted_init(wide_task)(jax.random.key(0)),
                                            synthetic_batch(wide_data, k * batch_size))
            _, wide_times = timed_steps(wide_task.train_step, wide_state, wide_batch, suite.warmup, suite.steps,
                                        MatmulProbe(suite.matmul_n))
            rec["wide_batch_s"] = float(np.median(wide_times))
            rec["wide_batch_speedup"] = k * single / rec["wide_batch_s"]
        records.append(rec)
    return records


def measure_batch_scaling(entry: Entry, batches: tuple[int, ...], suite: Suite, peak_flops: float) -> list[dict]:
    """Step time, examples/s and fraction of peak at several batch sizes of one config."""
    import jax

    records = []
    for b in batches:
        task, data = build(entry, b)
        state, batch = placed(jitted_init(task)(jax.random.key(0)), synthetic_batch(data, b))
        compiled = jittable(task.train_step).lower(state, batch).compile()
        flops = flops_of(compiled.cost_analysis())
        probe = MatmulProbe(suite.matmul_n)
        state, times = timed_steps(task.train_step, state, batch, suite.warmup, suite.section_steps, probe)
        stats = summarize(times)
        rec = {"kind": "batch_scaling", "family": entry.family, "config": entry.name, "size": entry.size,
               "batch": b, **stats, "examples_per_s": b / stats["median_s"], "flops": flops}
        if flops:
            rec.update(_fractions(flops, stats["median_s"], probe, peak_flops))
        records.append(rec)
    return records


# (name, layer, input [H, W, C]) of the convolutions the MNIST conv configs are made of, and the
# gen_jax.nn layers that represent the strided and transposed ones exactly (sub-pixel, space-to-depth)
KERNELS = (
    ("conv 3x3 s1 64->64 @14x14 (U-Net/Glow body)", ("conv", 64, 3, 1), (14, 14, 64)),
    ("conv 3x3 s2 32->64 @14x14 (VAE encoder)", ("conv", 64, 3, 2), (14, 14, 32)),
    ("  space-to-depth alternative: pad + s2d + conv 2x2 4x32->64", ("s2d", 64, 3, 2), (14, 14, 32)),
    ("conv-transpose 3x3 s2 64->32 @14x14 (VAE decoder)", ("convT", 32, 3, 2), (14, 14, 64)),
    ("  sub-pixel alternative: conv 3x3 64->4x32 + depth-to-space", ("subpixel", 32, 3, 2), (14, 14, 64)),
    ("conv 4x4 s2 64->128 @14x14 (DCGAN D)", ("conv", 128, 4, 2), (14, 14, 64)),
    ("  space-to-depth alternative: pad + s2d + conv 2x2 4x64->128", ("s2d", 128, 4, 2), (14, 14, 64)),
    ("conv-transpose 4x4 s2 128->64 @7x7 (DCGAN G)", ("convT", 64, 4, 2), (7, 7, 128)),
    ("  sub-pixel alternative: conv 3x3 128->4x64 + depth-to-space", ("subpixel", 64, 3, 2), (7, 7, 128)),
    ("dense 3136->512 (reference matmul)", ("dense", 512, 0, 0), (3136,)),
)


def measure_kernels(suite: Suite, batch: int) -> list[dict]:
    """Throughput of single layers (forward, and forward + gradient w.r.t. input and weights) as a
    fraction of the interleaved matmul's: which convolution kinds XLA runs near peak on this device."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from gen_jax.nn import Downsample2x, Upsample2x

    records = []
    for name, (kind, features, k, stride), shape in KERNELS:
        layer = {"conv": lambda: nn.Conv(features, (k, k), strides=(stride, stride), padding="SAME"),
                 "convT": lambda: nn.ConvTranspose(features, (k, k), strides=(stride, stride), padding="SAME"),
                 "subpixel": lambda: Upsample2x(features, "subpixel"),
                 "s2d": lambda: Downsample2x(features, "space_to_depth", kernel=k),
                 "dense": lambda: nn.Dense(features)}[kind]()
        x = jax.random.normal(jax.random.key(0), (batch, *shape), jnp.float32)
        params = layer.init(jax.random.key(1), x)

        def loss(p, x):
            return jnp.sum(jnp.square(layer.apply(p, x)))

        for mode, fn in (("forward", jax.jit(layer.apply)), ("forward+backward", jax.jit(jax.grad(loss, (0, 1))))):
            flops = flops_of(fn.lower(params, x).compile().cost_analysis())
            probe = MatmulProbe(suite.matmul_n)
            _, t = _time_calls(lambda key: fn(params, x), budget_s=2.0, probe=probe)
            rec = {"kind": "kernel", "family": "-", "config": "-", "kernel": name, "mode": mode, "batch": batch,
                   "median_s": t, "flops": flops}
            if flops:
                rec.update(gflops_per_s=flops / t / 1e9, peak_fraction=flops / t / probe.flops_per_s)
            records.append(rec)
    return records


def run_worker(entry: Entry, suite: Suite, *, devices: int = 1, xla_flags: tuple[str, ...] = (),
               drop_flags: tuple[str, ...] = (), force_host_devices: bool = False) -> dict:
    """Times ``entry``'s train step in a fresh subprocess (:func:`worker`) with extra ``XLA_FLAGS``,
    without the flags named like those in ``drop_flags``, and, on CPU, ``devices`` forced host
    devices. Returns the worker's JSON, or ``{'error': ...}``."""
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
    proc = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--worker", json.dumps(args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_data_parallel(entry: Entry, suite: Suite, on_cpu: bool) -> list[dict]:
    """Step time with the batch sharded over N devices, one subprocess per N (strong scaling: the
    global batch is fixed). On CPU the N devices are forced host devices sharing the same cores."""
    import jax

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
    included, see :func:`main`), without gen_jax's flags (XLA's own defaults), and with each of
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
    import jax

    batch_size = batch_for(entry, suite)
    task, data = build(entry, batch_size)
    init = jitted_init(task)
    host = synthetic_batch(data, batch_size)
    no_donate = jax.jit(lambda state, batch: task.train_step(state, batch))
    records = []
    for name, step in (("donated", task.train_step), ("not donated", no_donate)):
        state, batch = placed(init(jax.random.key(0)), host)
        old = jax.tree.leaves(state)[0]
        new_state, _ = step(state, batch)
        donated = old.is_deleted()
        _, times = timed_steps(step, new_state, batch, suite.warmup, 2 * suite.section_steps)
        records.append({"kind": "donation", "family": entry.family, "config": entry.name, "size": entry.size,
                        "batch": batch_size, "variant": name, "input_deleted": donated, **summarize(times)})
    return records


def worker(args: dict) -> dict:
    """Subprocess body of :func:`run_worker`: times the step on ``args['devices']`` devices (state
    replicated, batch sharded) and returns one JSON-able dict."""
    import jax

    from gen_jax.train import make_mesh, replicate, shard_batch

    if jax.device_count() < args["devices"]:
        raise RuntimeError(f"need {args['devices']} devices, have {jax.device_count()}")
    config = load_config(args["config"], args["arg"])
    entry = Entry(args["config"], config, config.family, size_class(config))
    task, data = build(entry, args["batch"])
    mesh = make_mesh(jax.devices()[:args["devices"]])
    with without_dataset(entry):
        state = replicate(jitted_init(task)(jax.random.key(0)), mesh)
    batch = shard_batch(synthetic_batch(data, args["batch"]), mesh)
    compiled, compile_times = aot_compile(jittable(task.train_step), state, batch)
    _, times = timed_steps(compiled, state, batch, args["warmup"], args["steps"])
    stats = summarize(times)
    return {**stats, "examples_per_s": args["batch"] / stats["median_s"], "device_count": jax.device_count(),
            "compile_s": compile_times["compile_s"]}


def measure_samplers(entry: Entry, suite: Suite) -> list[dict]:
    """DDPM (all T steps) vs DDIM (``suite.ddim_steps``) sampling time, and each compiled sampler vs
    steps x one jitted denoiser call at the same batch, for a diffusion config."""
    import jax
    import jax.numpy as jnp

    from gen_jax import diffusion

    parts = diffusion_parts(entry)
    if parts is None:
        return [{"kind": "skipped", "family": entry.family, "config": entry.name,
                 "reason": "the diffusion task module exposes no denoiser/schedule builder"}]
    apply_fn, params, schedule, data = parts
    n = suite.sample_n.get(entry.size, 16)
    shape = (n, *data.shape)
    T = int(schedule.num_timesteps)
    x = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    t = jnp.full((n,), T // 2, jnp.int32)
    call = jax.jit(apply_fn)
    _, call_s = _time_calls(lambda key: call(params, x, t))
    param = entry.config.objective.get("parameterization", "eps")
    ddim_steps = min(suite.ddim_steps, T)
    samplers = [("ddim", ddim_steps, lambda f, k: diffusion.ddim_sample(
        f, params, schedule, k, shape, num_steps=ddim_steps, parameterization=param))]
    if entry.size in suite.ddpm_sizes:
        samplers.insert(0, ("ddpm", T, lambda f, k: diffusion.ddpm_sample(f, params, schedule, k, shape,
                                                                          parameterization=param)))
    records = []
    for name, steps, sample in samplers:
        first_s, s = _time_calls(lambda k: sample(apply_fn, k))
        _, bare_s = _time_calls(lambda k: sample(_zero_denoiser, k))
        records.append({"kind": "sampler", "family": entry.family, "config": entry.name, "size": entry.size,
                        "sampler": name, "steps": steps, "n": n, "median_s": s, "first_call_s": first_s,
                        "denoiser_call_s": call_s, "steps_x_call_s": steps * call_s,
                        "overhead_ratio": s / (steps * call_s), "no_network_s": bare_s})
    return records


def _zero_denoiser(params, x_t, t, label=None):
    """A denoiser that predicts 0: timing a sampler with it isolates the sampler's own arithmetic
    (noise draws, posterior means, the scan) from the network."""
    del params, t, label
    return x_t * 0.0


def _time_calls(fn: Callable, budget_s: float = 1.0, probe: MatmulProbe | None = None) -> tuple[float, float]:
    """``(first call s, median later call s)`` of ``fn(key)``, each call synchronised; 3 to 50 later
    calls, as many as fit in about ``budget_s``. With ``probe``, the matmul is timed (on its own)
    before every later call."""
    import jax

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


def diffusion_parts(entry: Entry):
    """``(apply_fn, params, schedule, data)`` of a diffusion config through the family task module's
    own builders (``build_denoiser(config, data)``, ``build_schedule(config.objective)``), or None if
    it has none. ``params`` are the task's freshly initialised evaluation (EMA) parameters."""
    import jax

    from experiments.run import FAMILIES
    from gen_jax import diffusion

    module = importlib.import_module(FAMILIES["diffusion"])
    if not (hasattr(module, "build_denoiser") and hasattr(module, "build_schedule")):
        return None
    config = entry.config
    data = data_spec(config)
    net, schedule = module.build_denoiser(config, data), module.build_schedule(config.objective)
    task, _ = build(entry, 16)
    state = jitted_init(task)(jax.random.key(0))
    return diffusion.make_denoise_fn(net), state.eval_params, schedule, data


# --------------------------------------------------------------------------------------------------
# Environment, targets, report


def environment(suite: Suite, argv: list[str]) -> dict:
    import flax
    import jax
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


def evaluate_targets(records: list[dict], backend: str) -> list[dict]:
    """Each target: measured values, and whether it is met (``None``: not measured in this run)."""
    out = []
    conv = [r for r in records if r["kind"] == "step" and r["size"] != "toy" and r.get("batch") == 128
            and "peak_fraction" in r]
    out.append({"target": f"conv configs >= {TARGETS['conv_peak_fraction']:.0%} of measured matmul peak "
                          f"at batch 128 on CPU",
                "measured": ", ".join(f"{r['config']} {r['peak_fraction']:.0%}" for r in conv) or "-",
                "met": (all(r["peak_fraction"] >= TARGETS["conv_peak_fraction"] for r in conv)
                        if conv and backend == "cpu" else None)})
    samp = [r for r in records if r["kind"] == "sampler"]
    out.append({"target": f"compiled sampler <= {TARGETS['sampler_overhead']} x (steps x one denoiser call)",
                "measured": ", ".join(f"{r['config']} {r['sampler']}-{r['steps']} {r['overhead_ratio']:.2f}x"
                                      for r in samp) or "-",
                "met": all(r["overhead_ratio"] <= TARGETS["sampler_overhead"] for r in samp) if samp else None})
    vm = [r for r in records if r["kind"] == "vmap" and r["seeds"] == 8 and r["size"] == "toy"]
    out.append({"target": f"vmap over 8 seeds >= {TARGETS['vmap8_speedup']:.0f}x the throughput of 8 "
                          f"sequential runs (toy)",
                "measured": ", ".join(f"{r['config']} {r['speedup_vs_sequential']:.1f}x" for r in vm) or "-",
                "met": all(r["speedup_vs_sequential"] >= TARGETS["vmap8_speedup"] for r in vm) if vm else None})
    lc = [r for r in records if r["kind"] == "loop_check"]
    out.append({"target": "no retrace or implicit host transfer inside the training loop",
                "measured": ", ".join(f"{r['config']} traces={r['traces']} compiles={r['compiles']} "
                                      f"guard={'ok' if r['transfer_guard_ok'] else 'FAIL'}" for r in lc) or "-",
                "met": all(r["ok"] for r in lc) if lc else None})
    return out


def _fmt(v, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return format(v, spec)
    return str(v)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _ms(v) -> str:
    return "-" if v is None else f"{1e3 * v:.3g}"


def _mb(v) -> str:
    return "-" if v is None else f"{v / 2**20:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"] + [
        "| " + " | ".join(r) + " |" for r in rows]


def _short_source(op_name: str, keep: int = 90) -> str:
    op_name = op_name.replace("jit(step)/", "").replace("jit(main)/", "")
    return op_name if len(op_name) <= keep else "..." + op_name[-keep:]


def render_markdown(result: dict) -> str:
    """The report's tables (environment, per-config, then one table per cross-config measurement)."""
    env, records = result["env"], result["records"]
    by = lambda kind: [r for r in records if r["kind"] == kind]  # noqa: E731
    lines = [f"# gen_jax benchmark — suite `{env['suite']}`", "",
             f"`{env['command']}` — {env['date_utc']}; jax {env['jax']} / jaxlib {env['jaxlib']} "
             f"(flax {env['flax']}, optax {env['optax']}, Python {env['python']}); backend {env['backend']} "
             f"({env['device_kind']}, {env['device_count']} device(s), {env['cpu_model']}, "
             f"{env['cpus_usable']} usable CPU cores, load avg {_fmt(env['load_avg_1min'])}); "
             f"XLA_FLAGS=`{env['XLA_FLAGS'] or '(unset)'}`; git {env['git_commit'][:10] or '?'}"
             f"{' + local changes' if env.get('git_dirty') else ''}.", ""]
    peaks = by("matmul_peak")
    if peaks:
        lines += [f"Matmul peak (f32 {peaks[0]['n']}^2 @ {peaks[0]['n']}^2, measured at start and end of the run; "
                  f"the larger is used): " + ", ".join(f"{p['gflops_per_s']:.1f} GFLOP/s" for p in peaks)
                  + f" -> **{result['peak_gflops_per_s']:.1f} GFLOP/s**."
                  + "".join(f" (bf16, for reference: {r['gflops_per_s']:.1f} GFLOP/s.)" for r in by("matmul_bf16")),
                  ""]
    params = {r["config"]: r for r in by("params")}
    compiles = {r["config"]: r for r in by("compile")}
    loops = {r["config"]: r for r in by("loop_check")}
    rows = []
    for r in by("step"):
        p, c, lc = params.get(r["config"], {}), compiles.get(r["config"], {}), loops.get(r["config"], {})
        n_params = " + ".join(f"{k} {v / 1e6:.3g}M" if k != "params" else f"{v / 1e6:.3g}M"
                              for k, v in p.items() if k in ("params", "G", "D"))
        mem = r.get("xla_total_bytes")
        rows.append([r["family"], r["config"], r["size"], n_params, str(r["batch"]),
                     _fmt(c.get("cold_total_s")), _fmt(c.get("warm_total_s")),
                     f"{_ms(r['median_s'])} ± {_ms(r['iqr_s'])}", _fmt(r["examples_per_s"], ".4g"),
                     (">= " if r.get("flops_lower_bound") else "") + _fmt(r["flops"] / 1e9 if r.get("flops") else None),
                     _fmt(r.get("gflops_per_s")),
                     _pct(r.get("peak_fraction")), _pct(r.get("peak_fraction_run")),
                     _mb(mem), "ok" if lc.get("ok") else ("FAIL" if lc else "-")])
    for r in by("lowered"):
        p = params.get(r["config"], {})
        n_params = " + ".join(f"{k} {v / 1e6:.3g}M" if k != "params" else f"{v / 1e6:.3g}M"
                              for k, v in p.items() if k in ("params", "G", "D"))
        rows.append([r["family"], r["config"], r["size"], n_params, str(r["batch"]), "not timed", "-", "-", "-",
                     _fmt(r["flops_hlo"] / 1e9 if r.get("flops_hlo") else None) + " (HLO)", "-", "-", "-", "-", "-"])
    if rows:
        lines += ["## Train step per config", "",
                  "compile = trace + lower + XLA compile of `task.train_step` (AOT API), cold and warm (persistent "
                  "cache, after `jax.clear_caches()`); step = median ± IQR over timed steps, each synchronised; "
                  "GFLOP/step from XLA's cost analysis of the compiled step (`>=`: a loop with matmuls is "
                  "counted once, so a lower bound); % peak = achieved FLOP/s / the throughput of the f32 matmul "
                  "timed in between the steps (same contention; `run` = of the run's best matmul); memory = XLA "
                  "buffer assignment (args + outputs + temps - aliased); loop = `fit` under `log_compiles` + "
                  "`transfer_guard('disallow')` with 0 traces/compiles and no per-step host sync.", ""]
        lines += _table(["family", "config", "size", "params", "batch", "compile cold s", "compile warm s",
                         "step ms", "examples/s", "GFLOP/step", "GFLOP/s", "% peak", "% run peak", "mem MB", "loop"],
                        rows)
        lines.append("")
    if by("profile"):
        lines += ["## Where each step's time goes (top XLA ops, `jax.profiler`)", "",
                  "Two steps traced after the timed ones; each op's time per step and share of the step "
                  "(`covered` = all attributed op time / step time; ops can overlap on several threads). "
                  "`source` is the op's JAX origin: `transpose(jvp(...))` is a backward pass.", ""]
        prof_rows = []
        for r in by("profile"):
            for op in r["ops"][:5]:
                prof_rows.append([r["config"], op["op"], op["opcode"], _short_source(op["source"]),
                                  _ms(op["s_per_step"]), _pct(op["fraction"])])
            prof_rows.append([r["config"], "(all ops)", "", "", _ms(r["profiled_step_s"]), _pct(r["covered"])])
        lines += _table(["config", "op", "opcode", "source", "ms/step", "% of step"], prof_rows)
        lines += ["", "Share of the step by kind of op (`op_kind`: a fusion holding a convolution or dot counts as one, "
                  "others by their root op), summed over threads, so a row can exceed 100%; `not attributed` = "
                  "1 - covered: step time no op event accounts for. On XLA CPU with Eigen convolutions (gen_jax's "
                  "default, `configure_xla_cpu`) that is mostly the convolutions' own work, which runs outside "
                  "the traced op events (their events last a few ms); in small steps, dispatch between ops:", ""]
        lines += _table(["config", *OP_KINDS, "not attributed"],
                        [[r["config"], *(_pct(r.get("by_kind", {}).get(k)) for k in OP_KINDS),
                          _pct(max(0.0, 1.0 - r["covered"]))] for r in by("profile")])
        lines.append("")
    if by("op_by_op"):
        lines += ["## jit vs op-by-op (`jax.disable_jit()`)", ""]
        lines += _table(["config", "batch", "jit ms", "op-by-op ms", "jit speedup"],
                        [[r["config"], str(r["batch"]), _ms(r["jit_median_s"]), _ms(r["op_by_op_median_s"]),
                          f"{r['speedup']:.0f}x"] for r in by("op_by_op")])
        lines.append("")
    if by("vmap"):
        lines += ["## K seeds: one vmapped program vs K sequential runs", ""]
        lines += ["speedup = K x (one seed's step time) / (K seeds' step time); % peak = achieved FLOP/s "
                  "over the interleaved matmul's; ceiling = 1 / (one seed's fraction of peak): K seeds cost K "
                  "times the FLOPs, so no program can beat it; batch K x B = the speedup of ONE seed trained at "
                  "K times the batch (K x single ms / its step time): the same rows through one set of weights, "
                  "the reference a K-seed program can hope to approach.", ""]
        lines += _table(["config", "batch", "K", "method", "step ms (K seeds)", "K x single ms", "speedup",
                         "% peak", "ceiling", "batch K x B"],
                        [[r["config"], str(r["batch"]), str(r["seeds"]), r["method"], _ms(r["median_s"]),
                          _ms(r["sequential_s"]), f"{r['speedup_vs_sequential']:.2f}x", _pct(r.get("peak_fraction")),
                          _fmt(r.get("speedup_ceiling"), ".1f") + "x" if r.get("speedup_ceiling") else "-",
                          f"{r['wide_batch_speedup']:.2f}x" if "wide_batch_speedup" in r else "-"]
                         for r in by("vmap")])
        lines.append("")
    if by("batch_scaling"):
        lines += ["## Batch-size scaling", ""]
        lines += _table(["config", "batch", "step ms", "examples/s", "% peak"],
                        [[r["config"], str(r["batch"]), f"{_ms(r['median_s'])} ± {_ms(r['iqr_s'])}",
                          _fmt(r["examples_per_s"], ".4g"), _pct(r.get("peak_fraction"))]
                         for r in by("batch_scaling")])
        lines.append("")
    if by("data_parallel"):
        lines += ["## Data parallel (fixed global batch, state replicated, batch sharded; on CPU: forced host "
                  "devices sharing the same cores)", ""]
        lines += _table(["config", "batch", "devices", "step ms", "examples/s", "speedup vs first"],
                        [[r["config"], str(r["batch"]), str(r["devices"]),
                          f"{_ms(r.get('median_s'))} ± {_ms(r.get('iqr_s'))}" if "median_s" in r else r.get("error", "-"),
                          _fmt(r.get("examples_per_s"), ".4g"), _fmt(r.get("speedup_vs_first"), ".2f")]
                         for r in by("data_parallel")])
        lines.append("")
    if by("donation"):
        lines += ["## State donation (`donate_argnums`) on/off", ""]
        lines += _table(["config", "batch", "variant", "input buffers deleted", "step ms"],
                        [[r["config"], str(r["batch"]), r["variant"], str(r["input_deleted"]),
                          f"{_ms(r['median_s'])} ± {_ms(r['iqr_s'])}"] for r in by("donation")])
        lines.append("")
    if by("xla_flags"):
        lines += ["## XLA flags (each in a fresh subprocess, one device)", ""]
        lines += [f"`(as run)`: this run's XLA_FLAGS, `{env['XLA_FLAGS'] or '(unset)'}`; the other rows change "
                  "them as stated.", ""]
        lines += _table(["config", "batch", "XLA_FLAGS", "XLA compile s", "step ms", "speedup vs as run"],
                        [[r["config"], str(r["batch"]), f"`{r['flags']}`", _fmt(r.get("compile_s")),
                          f"{_ms(r['median_s'])} ± {_ms(r['iqr_s'])}" if "median_s" in r else r.get("error", "-"),
                          _fmt(r.get("speedup_vs_as_run"), ".2f")] for r in by("xla_flags")])
        lines.append("")
    if by("kernel"):
        lines += ["## Single layers (convolution kinds of the MNIST conv configs)", "",
                  "forward+backward = gradient w.r.t. input and weights; % peak = achieved FLOP/s over the f32 "
                  "matmul timed in between.", ""]
        lines += _table(["layer", "batch", "mode", "ms", "GFLOP", "GFLOP/s", "% peak"],
                        [[r["kernel"], str(r["batch"]), r["mode"], _ms(r["median_s"]),
                          _fmt(r["flops"] / 1e9 if r.get("flops") else None), _fmt(r.get("gflops_per_s")),
                          _pct(r.get("peak_fraction"))] for r in by("kernel")])
        lines.append("")
    if by("sampler"):
        lines += ["## Sampling (compiled `lax.scan` samplers)", ""]
        lines += ["ratio = sampler time / (steps x one jitted denoiser call at the same batch); "
                  "no-network = the same sampler with a denoiser that returns 0 (noise draws, posterior "
                  "arithmetic and the scan alone); first call includes compilation.", ""]
        lines += _table(["config", "sampler", "steps", "n", "sample s", "first call s", "one denoiser call ms",
                         "steps x call s", "ratio", "no-network s"],
                        [[r["config"], r["sampler"], str(r["steps"]), str(r["n"]), _fmt(r["median_s"]),
                          _fmt(r["first_call_s"]), _ms(r["denoiser_call_s"]), _fmt(r["steps_x_call_s"]),
                          f"{r['overhead_ratio']:.2f}", _fmt(r.get("no_network_s"))] for r in by("sampler")])
        lines.append("")
    if loops:
        lines += ["## Loop check (traces / compilations / implicit transfers in `fit`)", ""]
        lines += ["`runs ahead`: the loop asked for the next batch less than half a step after dispatching a "
                  "step (no per-step host sync; judged for steps >= 5 ms). `data source`: implicit transfers made "
                  "by the run's own batch source (ToyBatches / ImageBatches), outside the loop proper.", ""]
        lines += _table(["config", "steps", "traces", "compiles", "transfer guard",
                         "runs ahead (min dispatch gap / step ms)", "data source transfers"],
                        [[r["config"], str(r["steps"]), str(r["traces"]), str(r["compiles"]),
                          "ok" if r["transfer_guard_ok"] else f"FAIL: {r['transfer_error']}",
                          f"{ {True: 'yes', False: 'NO', None: 'not judged'}[r.get('runs_ahead')]} "
                          f"({_ms(r.get('dispatch_gap_min_s'))} / {_ms(r.get('step_s'))})",
                          r.get("data_source_transfers", "-")] for r in loops.values()])
        lines.append("")
    lines += ["## Targets", ""]
    lines += _table(["target", "measured", "status"],
                    [[t["target"], t["measured"], {True: "met", False: "NOT met", None: "not measured"}[t["met"]]]
                     for t in result["targets"]])
    lines.append("")
    notes = by("skipped") + by("error")
    if notes:
        lines += ["## Skipped / failed", ""]
        lines += _table(["family", "config", "what", "reason"],
                        [[r.get("family", "-"), r.get("config", "-"), r.get("what", r["kind"]),
                          r.get("reason", r.get("error", "")).replace("|", "/").replace("\n", " ")[:300]]
                         for r in notes])
        lines.append("")
    lines += ["Timings come from a machine that may be shared: compare ratios within one run, not absolute "
              "numbers across runs.", ""]
    return "\n".join(lines)


def render_architectures(layers: dict[str, dict]) -> str:
    """Per config, the parameters grouped by module (the architecture as its parameters show it)."""
    lines = ["# Architectures (parameter shapes by module)", ""]
    for name, info in layers.items():
        lines += [f"## {name} ({info['family']}, {info['size']}): {info['total']:,} parameters", ""]
        lines += _table(["module", "parameters", "count"],
                        [[m, s, f"{c:,}"] for m, s, c in info["rows"]])
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Driver


def _guard(records: list[dict], what: str, entry: Entry | None, fn: Callable[[], Any]) -> None:
    """Runs one measurement (without a dataset); a failure becomes an 'error' record instead of
    ending the run."""
    try:
        with without_dataset(entry) if entry else contextlib.nullcontext():
            out = fn()
    except Exception as e:
        records.append({"kind": "error", "what": what, "family": entry.family if entry else "-",
                        "config": entry.name if entry else "-", "error": f"{type(e).__name__}: {e}",
                        "traceback": traceback.format_exc()[-2000:]})
        print(f"  {what} failed: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr, flush=True)
        return
    records.extend(out if isinstance(out, list) else [out])


SECTIONS = ("op_by_op", "vmap", "scaling", "dp", "samplers", "donation", "flags", "kernels")


def run(suite: Suite, families: tuple[str, ...], out_dir: str, names: tuple[str, ...] = (),
        argv: list[str] | None = None, log: Callable[[str], None] = print, skip: tuple[str, ...] = (),
        only: tuple[str, ...] = ()) -> dict:
    """Runs ``suite`` over ``families`` (or the named configs) and writes the JSON + markdown.

    ``skip`` names cross-config sections to leave out (a subset of ``SECTIONS``); ``only`` runs just
    those sections, without the per-config table.
    """
    import jax

    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gen_jax_bench_cache_") as cache_dir:
        configure_jax(cache_dir)
        env = environment(suite, argv or [])
        on_cpu = jax.default_backend() == "cpu"
        records: list[dict] = []
        t_start = time.perf_counter()
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
        described = [e for e in entries if e.size in suite.describe_sizes and not names]
        layers = {}
        if only:
            skip = tuple(x for x in SECTIONS if x not in only)
        for e in () if only else measured + described:
            log(f"[{time.perf_counter() - t_start:6.1f}s] {e.family} {e.name} ({e.size})")
            _guard(records, "layers", e, lambda e=e: _layers(e, layers))
            if e in measured:
                _guard(records, "train step", e, lambda e=e: measure_config(e, suite, peak["gflops_per_s"] * 1e9,
                                                                           warm_cache=True))
            else:
                _guard(records, "describe", e, lambda e=e: describe_config(e, suite))
        toy = [e for e in measured if e.size == "toy"]
        if toy and suite.op_by_op_steps and "op_by_op" not in skip:
            log(f"[{time.perf_counter() - t_start:6.1f}s] jit vs op-by-op: {toy[0].name}")
            _guard(records, "op-by-op", toy[0], lambda: measure_op_by_op(toy[0], suite))
        if toy and "vmap" not in skip:
            for e in (toy if suite.name != "smoke" else toy[:1]):
                log(f"[{time.perf_counter() - t_start:6.1f}s] vmap over seeds: {e.name}")
                _guard(records, "vmap", e, lambda e=e: measure_vmap(e, suite))
        for size, batches in ({} if "scaling" in skip else suite.scaling_batches).items():
            pick = _cheapest([e for e in measured if e.size == size], records)
            if pick is not None:
                log(f"[{time.perf_counter() - t_start:6.1f}s] batch scaling: {pick.name}")
                _guard(records, "batch scaling", pick,
                       lambda p=pick, b=batches: measure_batch_scaling(p, b, suite, peak["gflops_per_s"] * 1e9))
        for size in () if "dp" in skip else suite.dp_sizes:
            pick = _cheapest([e for e in measured if e.size == size], records)
            if pick is not None:
                log(f"[{time.perf_counter() - t_start:6.1f}s] data parallel: {pick.name}")
                _guard(records, "data parallel", pick, lambda p=pick: measure_data_parallel(p, suite, on_cpu))
        for size in suite.tuning_sizes:
            pick = _cheapest([e for e in measured if e.size == size], records)
            if pick is not None and "donation" not in skip:
                log(f"[{time.perf_counter() - t_start:6.1f}s] donation: {pick.name}")
                _guard(records, "donation", pick, lambda p=pick: measure_donation(p, suite))
            if pick is not None and suite.flag_variants and "flags" not in skip:
                log(f"[{time.perf_counter() - t_start:6.1f}s] XLA flags: {pick.name}")
                _guard(records, "XLA flags", pick, lambda p=pick: measure_xla_flags(p, suite))
        if suite.kernel_batch and "kernels" not in skip:
            log(f"[{time.perf_counter() - t_start:6.1f}s] conv kernels")
            _guard(records, "kernels", None, lambda: measure_kernels(suite, suite.kernel_batch))
        for e in (e for e in measured if e.family == "diffusion" and "samplers" not in skip):
            log(f"[{time.perf_counter() - t_start:6.1f}s] samplers: {e.name}")
            _guard(records, "samplers", e, lambda e=e: measure_samplers(e, suite))
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
    with open(os.path.join(out_dir, "benchmark.json"), "w") as f:
        json.dump(result, f, indent=2, default=str)
    markdown = render_markdown(result)
    with open(os.path.join(out_dir, "benchmark.md"), "w") as f:
        f.write(markdown)
    with open(os.path.join(out_dir, "architectures.md"), "w") as f:
        f.write(render_architectures(layers))
    return result


def _layers(entry: Entry, layers: dict) -> list[dict]:
    import jax

    task, _ = build(entry, batch_for(entry, SUITES["smoke"]) if entry.size == "toy" else 8)
    state = jax.eval_shape(task.init, jax.random.key(0))
    trees = {"G": state.g.params, "D": state.d.params} if hasattr(state, "g") else {"": state.params}
    rows = []
    for prefix, tree in trees.items():
        rows += [((f"{prefix}:" if prefix else "") + m, s, c) for m, s, c in layer_table(tree)]
    layers[entry.name] = {"family": entry.family, "size": entry.size, "rows": rows,
                          "total": sum(c for _, _, c in rows)}
    return []


def _cheapest(entries: list[Entry], records: list[dict]) -> Entry | None:
    """The config of ``entries`` whose train step was fastest in the main measurement (ties and
    unmeasured configs: family order), used for the sections that time one config many times."""
    step_s = {r["config"]: r["median_s"] for r in records if r["kind"] == "step"}
    return min(entries, key=lambda e: (step_s.get(e.name, math.inf), FAMILY_ORDER.index(e.family)),
               default=None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="standard")
    parser.add_argument("--family", default=",".join(FAMILY_ORDER),
                        help="comma-separated families (default: all four)")
    parser.add_argument("--configs", default="", help="config names separated by ';' or ',' (default: one "
                                                      "per family and size class); name[key=value,...] "
                                                      "times a variant")
    parser.add_argument("--out", default="runs/benchmark", help="output directory")
    parser.add_argument("--skip", default="", help=f"comma-separated sections to leave out: {','.join(SECTIONS)}")
    parser.add_argument("--only", default="", help="comma-separated sections to run alone (no per-config table)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    families = tuple(f.strip() for f in args.family.split(",") if f.strip())
    bad = [f for f in families if f not in FAMILY_ORDER]
    if bad:
        parser.error(f"--family: unknown {bad}; expected a comma-separated subset of {list(FAMILY_ORDER)}")
    names = split_specs(args.configs)
    skip = tuple(x.strip() for x in args.skip.split(",") if x.strip())
    only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    for flag, value in (("--skip", skip), ("--only", only)):
        if set(value) - set(SECTIONS):
            parser.error(f"{flag}: unknown {sorted(set(value) - set(SECTIONS))}; expected a subset of {list(SECTIONS)}")
    from gen_jax.train import configure_xla_cpu

    configure_xla_cpu()  # what `experiments.train` runs with; worker subprocesses inherit it
    result = run(SUITES[args.suite], families, args.out, names, argv,
                 log=lambda m: print(m, file=sys.stderr, flush=True), skip=skip, only=only)
    print(render_markdown(result))
    print(f"wrote {os.path.join(args.out, 'benchmark.json')} and benchmark.md, architectures.md "
          f"({result['env']['wall_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
