"""Benchmark of the compiled train steps of every family; writes JSON + markdown tables.

``python -m experiments.benchmark [--suite smoke|standard|gpu] [--family flow,diffusion,vae,gan]
[--configs NAME,...] [--skip SECTION,...] [--only SECTION,...] [--out DIR]`` writes
``DIR/benchmark.json`` (environment + one record per measurement), ``DIR/benchmark.md`` (tables; also
printed) and ``DIR/architectures.md`` (each model's parameters, module by module). A config name may
carry overrides, ``'dcgan_mnist[model.d_downsample=space_to_depth]'``, to time a variant next to its
base. See experiments/BENCHMARKS.md.

Every model is built as a run builds it (the family's experiment config through the family task,
:mod:`experiments.benchmark.tasks`) and fed synthetic batches of the real shapes, so no dataset is
needed. Per config (:mod:`.per_config`): parameter count; compile time of the train step through the
AOT API, cold and warm (persistent cache); steady-state step time (median and IQR, each step
synchronised) and examples/s; FLOPs per step from XLA's cost analysis as a fraction of an f32 matmul
timed in between the steps; XLA's buffer memory and the peak memory; where the time goes per XLA op
(``jax.profiler``); and a loop check (``fit`` with no trace, compilation, implicit transfer or
per-step host sync). Across configs (:mod:`.sections`, :mod:`.kernels`, :mod:`.samplers`; ``--skip``
leaves them out): jit vs op-by-op, vmap over K seeds vs K sequential runs, batch-size scaling, data
parallelism over N devices and XLA flags (subprocesses, :mod:`.workers`), state donation on/off,
single convolution layers, DDPM vs DDIM sampling. Families whose task does not import are skipped
with a note; a measurement that fails on the backend (:data:`.driver.MEASUREMENT_ERRORS`) becomes an
error record, not a crash.

Timings on a shared machine are noisy: compare ratios measured within one run, not across runs.
"""

from experiments.benchmark import workers
from experiments.benchmark.configs import load_config, split_specs, with_overrides
from experiments.benchmark.driver import run
from experiments.benchmark.hlo import hlo_instructions, loops_with_matmuls, op_kind, profile_ops
from experiments.benchmark.loop_check import data_source_transfers, loop_check
from experiments.benchmark.report import render_architectures, render_markdown
from experiments.benchmark.sections import measure_xla_flags
from experiments.benchmark.suites import SECTIONS, SUITES, Entry, Suite, discover, evaluate_targets
from experiments.benchmark.timing import CompileEvents, aot_compile, placed, timed_steps

__all__ = [
    "CompileEvents", "Entry", "SECTIONS", "SUITES", "Suite", "aot_compile", "data_source_transfers", "discover",
    "evaluate_targets", "hlo_instructions", "load_config", "loop_check", "loops_with_matmuls", "measure_xla_flags",
    "op_kind", "placed", "profile_ops", "render_architectures", "render_markdown", "run", "split_specs",
    "timed_steps", "with_overrides", "workers",
]
