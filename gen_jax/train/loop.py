"""The training loop: progress, metrics.jsonl, periodic hooks and checkpoints, clean interruption.

``fit`` runs a compiled step over a deterministic batch stream from the state's own step, so a run
restored from a checkpoint continues exactly where it stopped. Metrics stay on device between log
points (no per-step host sync). SIGTERM/SIGINT finish the current step, write a checkpoint and
return with ``interrupted=True``. Too many consecutive non-finite updates raise
:class:`NonFiniteError` without writing a checkpoint, so the last good one stays intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from gen_jax.train.checkpoint import Checkpointer


class NonFiniteError(FloatingPointError):
    """Training produced too many consecutive non-finite losses or gradients."""


class MetricsWriter:
    """Appends one JSON object per logged step to ``path`` (``{'step': s, name: value, ...}``).

    Opening with ``resume_from=s`` first drops every record with step > s, so a resumed run's file
    equals an uninterrupted run's.
    """

    def __init__(self, path: str, resume_from: int | None = None):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path):
            keep = []
            with open(path) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a torn last line from a killed process
                    if resume_from is not None and rec.get("step", 0) <= resume_from:
                        keep.append(line if line.endswith("\n") else line + "\n")
            with open(path, "w") as f:
                f.writelines(keep)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}}) + "\n")


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics.jsonl file (skipping a torn last line)."""
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
    return out


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived inside ``interrupt_on_signals()``; ``args[0]`` is the signal's name."""


def interrupt_on_signals():
    """Context in which SIGTERM/SIGINT raise ``Interrupted`` (for work with no step boundary to stop
    at, e.g. the final evaluation), instead of killing the process without a word."""
    return _stop_on_signals(raise_now=True)


@contextlib.contextmanager
def _stop_on_signals(raise_now: bool = False):
    """Turns SIGTERM/SIGINT into a flag checked between steps (main thread only), or with
    ``raise_now`` into an ``Interrupted`` exception."""
    flag = {"signal": None}
    if jax.process_count() > 1 or not hasattr(signal, "SIGTERM"):
        yield flag
        return
    try:
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum, frame):
            if flag["signal"] is not None:  # second signal: give up at once
                signal.signal(signum, old[signum])
                raise KeyboardInterrupt
            flag["signal"] = signal.Signals(signum).name
            if raise_now:
                raise Interrupted(flag["signal"])

        for s in old:
            signal.signal(s, handler)
    except ValueError:  # not in the main thread
        yield flag
        return
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _scalar_step(state: Any) -> int:
    return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])


def fit(
    state: Any,
    train_step: Callable[[Any, Any], tuple[Any, dict]],
    batches: Callable[[int], Iterator[Any]],
    *,
    num_steps: int,
    workdir: str | None = None,
    checkpointer: Checkpointer | None = None,
    checkpoint_every: int = 1000,
    log_every: int = 100,
    hooks: list[tuple[int, Callable[[Any, int], dict | None]]] = (),
    max_nonfinite: int = 100,
    put_batch: Callable[[Any], Any] = lambda b: b,
    progress: bool = True,
    is_main_process: bool = True,
) -> tuple[Any, bool]:
    """Trains ``state`` to ``num_steps`` total steps.

    Args:
      state: a TrainState/TwoPlayerState (possibly with a leading replica axis); its ``step`` says
        where to start, so a restored state resumes.
      train_step: compiled ``step(state, batch) -> (state, metrics)``.
      batches: ``batches(start_step)`` yields the batch of every step from ``start_step`` on.
      num_steps: total number of steps of the run.
      workdir: where ``metrics.jsonl`` goes (None: no file).
      checkpointer: saves every ``checkpoint_every`` steps, at the end, and on SIGTERM/SIGINT.
      log_every: steps between metric logs (means over the steps since the last log).
      hooks: ``(every, fn(state, step) -> dict | None)``; returned metrics are logged.
      max_nonfinite: stop with NonFiniteError after this many consecutive skipped updates.
      put_batch: places a host batch on devices (e.g. sharding over a mesh).

    Returns:
      ``(state, interrupted)``.
    """
    if num_steps < 0 or log_every < 1 or checkpoint_every < 1:
        raise ValueError(f"need num_steps >= 0, log_every >= 1, checkpoint_every >= 1; got {num_steps}, "
                         f"{log_every}, {checkpoint_every}")
    start = _scalar_step(state)
    writer = (MetricsWriter(os.path.join(workdir, "metrics.jsonl"), resume_from=start)
              if workdir and is_main_process else None)
    bar = None
    if progress and is_main_process and start < num_steps:
        from tqdm.auto import tqdm
        bar = tqdm(total=num_steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                   disable=None, file=sys.stderr)
    pending: list[dict] = []
    t_last, step_last = time.perf_counter(), start
    interrupted = False

    saved = {start}  # a step is written once (a signal can arrive on a checkpoint step)

    def save(step):
        if checkpointer is not None and step not in saved:
            checkpointer.save(step, state)
            saved.add(step)

    with _stop_on_signals() as stop:
        it = batches(start)
        for step in range(start + 1, num_steps + 1):
            state, metrics = train_step(state, put_batch(next(it)))
            pending.append(metrics)
            if step % log_every == 0 or step == num_steps:
                host = jax.device_get(pending)
                logged = {k: float(np.mean([np.mean(m[k]) for m in host])) for k in host[0]}
                now = time.perf_counter()
                logged["steps_per_sec"] = (step - step_last) / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                logged["nonfinite_total"] = float(np.max(jax.device_get(state.nonfinite_total)))
                pending = []
                if writer:
                    writer.write(step, logged)
                if bar is not None:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in list(logged.items())[:4]}, refresh=False)
                    if bar.disable:
                        print(f"step {step}/{num_steps} " + " ".join(f"{k}={v:.4g}" for k, v in logged.items()),
                              flush=True)
                consecutive = int(np.max(jax.device_get(state.nonfinite_consecutive)))
                if consecutive >= max_nonfinite:
                    raise NonFiniteError(
                        f"{consecutive} consecutive non-finite losses/gradients up to step {step}; stopped "
                        f"without writing a checkpoint (the last good one is kept). Lower the learning rate, "
                        f"enable gradient clipping (optim.grad_clip) or check the data.")
            for every, fn in hooks:
                if step % every == 0 or step == num_steps:
                    out = fn(state, step)
                    if out and writer:
                        writer.write(step, out)
            if step % checkpoint_every == 0 and step != num_steps:
                save(step)
            if bar is not None:
                bar.update(1)
            if stop["signal"] is not None:
                save(step)
                print(f"\n{stop['signal']} received: checkpoint written at step {step}; rerun the same "
                      f"command to resume.", file=sys.stderr, flush=True)
                interrupted = True
                break
        else:
            if start < num_steps:
                save(num_steps)
    if bar is not None:
        bar.close()
    return state, interrupted
