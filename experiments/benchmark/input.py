"""The input pipeline against the step: can the data keep up with training?

For one image config: the pipeline alone (``gen_jax.data.Batches`` with the config's ``num_threads`` /
``prefetch`` / ``num_workers``, batches per second), then the runner's loop (``gen_jax.train.fit``) fed
by that pipeline and by one constant batch already in memory, alternating, each timed over the same
number of steps. ``loop_ratio`` = steps/s with the pipeline / steps/s with the constant batch: 1 means
the step never waits on the data (on a CPU the pipeline's threads also take cores from the step).

The data are the real dataset when ``--data_dir`` holds it (tfds: PNG decoding included), else
random images of the config's shape in a ``.npy`` read by rows (the cost of a read, without decoding).
"""

from __future__ import annotations

import os
import tempfile
import time

import jax
import numpy as np

from experiments.benchmark import tasks
from experiments.benchmark.suites import Entry, Suite, batch_for
from experiments.benchmark.timing import placed


def _source(entry: Entry, data, data_dir: str | None, tmp: str):
    from gen_jax.data import DatasetNotFoundError, NpySource, TfdsSource

    if data_dir:
        try:
            return TfdsSource(entry.config.data.name, "train", data_dir), f"tfds {entry.config.data.name}"
        except DatasetNotFoundError:
            pass
    path = os.path.join(tmp, "images.npy")
    n = 16 * max(entry.config.data.batch_size, 64)
    np.save(path, np.random.default_rng(0).integers(0, 256, (n, *data.shape), dtype=np.uint8))
    return NpySource(path), f"random .npy ({n} images)"


def _steps_per_s(task, state, batches, steps: int) -> tuple[object, float]:
    from gen_jax.train import shard_batch

    mesh = jax.tree.leaves(state)[0].sharding.mesh
    start = tasks.state_step(state)
    t = time.perf_counter()
    state = tasks.run_loop(task, state, batches, num_steps=start + steps, log_every=steps,
                           put_batch=lambda b: shard_batch(b, mesh))
    jax.block_until_ready(state)
    return state, steps / (time.perf_counter() - t)


def measure_input(entry: Entry, suite: Suite, data_dir: str | None) -> list[dict]:
    """Pipeline batches/s alone, and the loop's steps/s with the pipeline vs a constant batch."""
    from gen_jax.data import Batches

    batch_size = batch_for(entry, suite)
    task, data = tasks.load(entry.config, batch_size)
    d = entry.config.data
    with tempfile.TemporaryDirectory(prefix="gen_jax_input_") as tmp:
        source, what = _source(entry, data, data_dir, tmp)
        pipeline = Batches(source, batch_size, seed=0, num_threads=d.num_threads, prefetch=d.prefetch,
                           num_workers=d.num_workers)
        n = 4 * suite.section_steps
        it = pipeline(0)
        next(it)
        t = time.perf_counter()
        for _ in range(n):
            next(it)
        pipeline_per_s = n / (time.perf_counter() - t)
        del it
        host = jax.device_get(pipeline.batch_at(0))
        state, _ = placed(tasks.init_fn(task)(jax.random.key(0)), host)
        state, _ = _steps_per_s(task, state, lambda s: iter([host] * 3), 2)  # compile outside the timing
        rates = {"pipeline": [], "constant": []}
        steps = 4 * suite.section_steps
        for _ in range(3):  # alternating: pipeline, constant, pipeline, ...
            state, r = _steps_per_s(task, state, pipeline, steps)
            rates["pipeline"].append(r)
            state, r = _steps_per_s(task, state, lambda s: iter([host] * (steps + 1)), steps)
            rates["constant"].append(r)
    with_pipeline, constant = float(np.median(rates["pipeline"])), float(np.median(rates["constant"]))
    return [{"kind": "input", "family": entry.family, "config": entry.name, "size": entry.size, "batch": batch_size,
             "data": what, "num_threads": d.num_threads, "prefetch": d.prefetch, "num_workers": d.num_workers,
             "pipeline_batches_per_s": pipeline_per_s, "steps_per_s_pipeline": with_pipeline,
             "steps_per_s_constant": constant, "pipeline_vs_step": pipeline_per_s / constant,
             "loop_ratio": with_pipeline / constant}]
