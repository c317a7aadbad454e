"""The peer section: each measured config's compiled gen_jax step timed against its PyTorch twin, eager
and under ``torch.compile``, alternating in rounds within one run, reported as ratios."""

from __future__ import annotations

import time

import jax
import numpy as np

from experiments.benchmark import peers, tasks
from experiments.benchmark.per_config import param_counts
from experiments.benchmark.suites import Entry, Suite, batch_for
from experiments.benchmark.timing import placed, summarize, timed_steps

ROUNDS = 4  # rounds of (gen_jax, torch eager, torch.compile); each times suite.section_steps steps of each


def timed_calls(step, warmup: int, steps: int) -> np.ndarray:
    """Seconds per call of ``step`` after ``warmup`` calls, for a function that returns when its work is done
    (PyTorch on CPU; a JAX function that blocks on its result)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def measure_peers(entry: Entry, suite: Suite, rounds: int = ROUNDS) -> dict:
    """gen_jax's step vs the PyTorch twin's (eager; compiled) on the same batch shape, timed alternately.

    ``ratio_eager`` = PyTorch eager step time / gen_jax's (> 1: gen_jax faster); ``ratio_compile`` likewise
    for ``torch.compile``. A contender that cannot run (the twin does not mirror an option, or
    ``torch.compile`` fails) gets its error in the record instead of a time.
    """
    import torch

    threads = peers.set_torch_threads()
    name, batch_size = entry.name, batch_for(entry, suite)  # a base config: the driver notes overridden ones
    task, data = tasks.load(entry.config, batch_size)
    host = tasks.example_batch(data, batch_size)
    state, batch = placed(tasks.init_fn(task)(jax.random.key(0)), host)
    step = tasks.train_step(task)
    rec = {"kind": "peer", "family": entry.family, "config": entry.name, "size": entry.size, "batch": batch_size,
           "peer": f"torch {torch.__version__}", "torch_threads": threads,
           "params": param_counts(tasks.abstract_state(task, jax.random.key(0)))}
    contenders = {}
    for label, compile in (("eager", False), ("compile", True)):
        try:
            twin = peers.build(name, entry.config, host, compile)
            t0 = time.perf_counter()
            twin.step()  # the first call compiles (torch.compile) or warms the allocator
            rec[f"torch_{label}_first_s"] = time.perf_counter() - t0
        except NotImplementedError as e:
            rec[f"torch_{label}_error"] = f"{type(e).__name__}: {e}"
            continue
        except Exception as e:  # noqa: BLE001 - torch.compile's failures are many; record, do not crash the run
            rec[f"torch_{label}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            continue
        rec.setdefault("twin_params", twin.param_counts())
        contenders[label] = twin.step
    times = {"gen_jax": [], **{label: [] for label in contenders}}
    for r in range(rounds):
        state, t = timed_steps(step, state, batch, suite.warmup if r == 0 else 1, suite.section_steps)
        times["gen_jax"].extend(t)
        for label, twin_step in contenders.items():
            times[label].extend(timed_calls(twin_step, 2 if r == 0 else 1, suite.section_steps))
    jax_s = summarize(np.asarray(times["gen_jax"]))
    rec.update({f"jax_{k}": v for k, v in jax_s.items()})
    for label in contenders:
        s = summarize(np.asarray(times[label]))
        rec.update({f"torch_{label}_{k}": v for k, v in s.items()})
        rec[f"ratio_{label}"] = s["median_s"] / jax_s["median_s"]
    rec["params_equal"] = rec.get("twin_params") == rec["params"]
    return rec
