"""The loop check: the training loop runs without retracing, recompiling, implicit host<->device
transfers or a per-step host sync; and the run's batch source makes no implicit transfer."""

from __future__ import annotations

import re
import time

import jax
import numpy as np

from experiments.benchmark import tasks
from experiments.benchmark.timing import CompileEvents


def loop_check(task, state, batch, steps: int, step_s: float | None = None) -> dict:
    """Runs the runner's loop (``gen_jax.train.fit``, :func:`tasks.run_loop`) for ``steps`` steps
    (after a 2-step warm-up run), counting traces and compilations and refusing implicit
    host<->device transfers.

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
    from gen_jax.train import shard_batch

    mesh = jax.tree.leaves(batch)[0].sharding.mesh
    host = jax.device_get(batch)
    start = tasks.state_step(state)
    stamps: list[float] = []

    def batches(first):
        del first
        return iter([host] * (steps + 2))

    def put_batch(b):
        stamps.append(time.perf_counter())
        return shard_batch(b, mesh)

    state = tasks.run_loop(task, state, batches, num_steps=start + 2, log_every=2, put_batch=put_batch)
    jax.block_until_ready(state)
    error, stamps[:] = None, []
    with CompileEvents(log_compiles=True) as events:
        try:
            with jax.transfer_guard("disallow"):
                state = tasks.run_loop(task, state, batches, num_steps=start + 2 + steps, log_every=steps,
                                       put_batch=put_batch)
                jax.block_until_ready(state)
        except jax.errors.JaxRuntimeError as e:  # a disallowed transfer raises from inside the loop
            if not is_transfer_guard_error(e):
                raise
            error = first_line(e)
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


def data_source_transfers(data, batch_size: int) -> str:
    """Whether the run's real batch source makes implicit transfers (``'none'`` or the error)."""
    source = tasks.batch_source(data, batch_size)
    source.batch_at(0)  # compile outside the guard
    try:
        with jax.transfer_guard("disallow"):
            source.batch_at(1)
    except jax.errors.JaxRuntimeError as e:
        if not is_transfer_guard_error(e):
            raise
        return first_line(e, 100)
    return "none"


def is_transfer_guard_error(e: Exception) -> bool:
    """Whether ``e`` is the error ``jax.transfer_guard('disallow')`` raises for an implicit transfer."""
    return "Disallowed" in str(e) and "transfer" in str(e)


def first_line(e: Exception, limit: int = 160) -> str:
    """A short description of an exception (a disallowed transfer as 'implicit <dir> transfer of <aval>')."""
    text = (str(e).splitlines() or [""])[0]
    m = re.search(r"Disallowed (\S+) transfer: aval=ShapedArray\(([^)]*)\)", text)
    if m:
        return f"implicit {m.group(1)} transfer of {m.group(2)}"
    return f"{type(e).__name__}: {text[:limit]}"
