"""The training loop: progress, metrics.jsonl, periodic hooks and checkpoints, clean interruption.

``fit`` runs a compiled step over a deterministic batch stream from the state's own step, so a run
restored from a checkpoint continues exactly where it stopped. Metrics stay on device between log
points (no per-step host sync). SIGTERM/SIGINT finish the current step, write a checkpoint and
return with ``interrupted=True``. A run that diverges raises :class:`DivergedError` at the next log
point without writing a checkpoint, so the last good one stays intact: too many skipped
(non-finite) updates, consecutive or in all (:class:`NonFiniteError`), or a loss that grew by orders of
magnitude over its value at the run's first step.

Besides the step's own metrics, every log record has the wall-clock ones (:data:`TIMING_KEYS`):
``steps_per_sec`` and ``data_wait_fraction``, the share of the window the loop spent waiting for the
next batch (near 0: the input pipeline keeps up with the steps).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np

from gen_jax.train.checkpoint import Checkpointer

TIMING_KEYS = ("steps_per_sec", "data_wait_fraction")  # wall-clock metrics: differ between identical runs


class DivergedError(FloatingPointError):
    """Training diverged: too many skipped non-finite updates, or a loss that exploded."""


class NonFiniteError(DivergedError):
    """Training produced too many non-finite losses or gradients (consecutive, or in all)."""


def _finite_or_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_none(v) for v in x]
    return x


def json_dumps(obj: Any, **kwargs) -> str:
    """``json.dumps`` with NaN and +-inf written as ``null``: always valid JSON (bare ``NaN`` and
    ``Infinity``, which Python writes by default, are not)."""
    return json.dumps(_finite_or_none(obj), allow_nan=False, **kwargs)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def with_progress(items: Iterable, total: int | None, desc: str, *, enabled: bool = True,
             every_s: float = 10.0) -> Iterator:
    """Yields ``items`` while showing progress: a tqdm bar on a terminal; otherwise (a log file) a line
    ``desc: i/total, elapsed, eta`` at most every ``every_s`` seconds and at the end."""
    if not enabled:
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm.auto import tqdm
        yield from tqdm(items, total=total, desc=desc, dynamic_ncols=True, leave=False, file=sys.stderr)
        return
    t0 = last = time.perf_counter()
    i = 0
    for i, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if now - last >= every_s and (total is None or i < total):
            eta = f", eta {_duration((now - t0) / i * (total - i))}" if total else ""
            print(f"{desc}: {i}/{total or '?'}, {_duration(now - t0)} elapsed{eta}", file=sys.stderr, flush=True)
            last = now
    print(f"{desc}: {i}/{total or i} done in {_duration(time.perf_counter() - t0)}", file=sys.stderr, flush=True)


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
        """Appends one record; non-finite values are written as ``null`` (valid JSON)."""
        with open(self.path, "a") as f:
            f.write(json_dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}}) + "\n")


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


def _loss_keys(metrics: dict) -> list[str]:
    """The objectives among a step's metrics: ``loss`` and every ``*_loss`` (a GAN's d_loss, g_loss)."""
    return [k for k in metrics if k == "loss" or k.endswith("_loss")]


class _DivergenceGuard:
    """The checks :func:`fit` runs at every log point: too many skipped (non-finite) updates, consecutive
    or in all, and a loss grown past ``max_loss_growth`` times its size at the call's first step."""

    def __init__(self, start: int, num_steps: int, max_nonfinite: int, max_skipped_fraction: float,
                 max_loss_growth: float | None, checkpointer: Checkpointer | None):
        self.start, self.num_steps, self.checkpointer = start, num_steps, checkpointer
        self.max_nonfinite, self.max_skipped_fraction = max_nonfinite, max_skipped_fraction
        self.max_loss_growth = max_loss_growth
        self.first_losses: dict[str, float] = {}  # |loss| at this call's first step: the scale of divergence

    def first_step(self, metrics: dict) -> None:
        if self.max_loss_growth is None:
            return
        first = jax.device_get({k: metrics[k] for k in _loss_keys(metrics)})
        self.first_losses = {k: abs(float(np.mean(v))) for k, v in first.items() if math.isfinite(float(np.mean(v)))}

    def check(self, state: Any, step: int, window_start: int, logged: dict[str, float]) -> None:
        consecutive = int(np.max(jax.device_get(state.nonfinite_consecutive)))
        total = int(np.max(jax.device_get(state.nonfinite_total)))
        last = self.checkpointer.latest_step() if self.checkpointer is not None else None
        kept = "no checkpoint was written" if last is None else f"the checkpoint of step {last} is kept"
        advice = (f"stopped without writing a checkpoint ({kept}). Try a lower learning rate or gradient "
                  f"clipping, or check the data.")
        if consecutive >= self.max_nonfinite:
            raise NonFiniteError(f"{consecutive} consecutive non-finite losses/gradients up to step {step}; "
                                 + advice)
        if total > self.max_skipped_fraction * self.num_steps:
            raise NonFiniteError(f"{total} of the first {step} updates were skipped as non-finite, more than "
                                 f"{self.max_skipped_fraction:g} of the run's {self.num_steps} steps; " + advice)
        if self.max_loss_growth is None:
            return
        for k, first in self.first_losses.items():
            value = logged.get(k, float("nan"))
            if math.isfinite(value) and abs(value) > self.max_loss_growth * max(first, 1.0):
                raise DivergedError(f"the loss diverged: {k} = {value:.4g} (mean of steps {window_start + 1}-{step}), "
                                    f"more than {self.max_loss_growth:g} x max(|{k}| at step {self.start + 1} = "
                                    f"{first:.4g}, 1); " + advice)


class _TrainLog:
    """Metric means over each log window, to ``metrics.jsonl`` and the progress bar (off a terminal:
    one line per log point, with the time left)."""

    def __init__(self, workdir: str | None, start: int, num_steps: int, *, progress: bool, is_main_process: bool):
        self.start, self.num_steps = start, num_steps
        self.writer = (MetricsWriter(os.path.join(workdir, "metrics.jsonl"), resume_from=start)
                       if workdir and is_main_process else None)
        self.bar = None
        if progress and is_main_process and start < num_steps:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=num_steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                            disable=None, file=sys.stderr)
        self.pending: list[dict] = []
        self.t_start = self.t_last = time.perf_counter()
        self.window_start = start
        self.data_wait = 0.0  # seconds blocked on the next batch since the last log point

    def next_batch(self, it: Iterator[Any]) -> Any:
        t = time.perf_counter()
        batch = next(it)
        self.data_wait += time.perf_counter() - t
        return batch

    def flush(self, state: Any, step: int) -> dict[str, float]:
        """Logs the means of the metrics since the last log point; returns them."""
        host = jax.device_get(self.pending)
        logged = {k: float(np.mean([np.mean(m[k]) for m in host])) for k in host[0]}
        now = time.perf_counter()
        logged["steps_per_sec"] = (step - self.window_start) / max(now - self.t_last, 1e-9)
        logged["data_wait_fraction"] = min(1.0, self.data_wait / max(now - self.t_last, 1e-9))
        self.data_wait = 0.0
        logged["nonfinite_total"] = float(np.max(jax.device_get(state.nonfinite_total)))
        self.pending = []
        self.write(step, logged)
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in list(logged.items())[:4]}, refresh=False)
            if self.bar.disable:
                rate = (step - self.start) / max(now - self.t_start, 1e-9)
                print(f"step {step}/{self.num_steps} " + " ".join(f"{k}={v:.4g}" for k, v in logged.items())
                      + f" elapsed={_duration(now - self.t_start)} eta={_duration((self.num_steps - step) / rate)}",
                      flush=True)
        self.t_last = now
        return logged

    def write(self, step: int, metrics: dict | None) -> None:
        if metrics and self.writer:
            self.writer.write(step, metrics)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
    max_skipped_fraction: float = 0.05,
    max_loss_growth: float | None = 1e4,
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
      log_every: steps between metric logs (means over the steps since the last log); the checks
        below run at these points.
      hooks: ``(every, fn(state, step) -> dict | None)``; returned metrics are logged.
      max_nonfinite: stop after this many consecutive skipped (non-finite) updates.
      max_skipped_fraction: stop once more than this fraction of the run's ``num_steps`` updates were
        skipped (counting from step 0, resumed runs included); 1 disables the check.
      max_loss_growth: stop once ``|loss|`` (and each ``*_loss`` metric), averaged over a log window,
        exceeds ``max_loss_growth * max(|its value at this call's first step|, 1)``; None disables.
      put_batch: places a host batch on devices (e.g. sharding over a mesh).

    Returns:
      ``(state, interrupted)``.

    Raises:
      NonFiniteError: too many skipped updates (consecutive, or in all).
      DivergedError: the loss grew beyond ``max_loss_growth``.
      Neither writes a checkpoint: the last one written stays the newest.
    """
    if num_steps < 0 or log_every < 1 or checkpoint_every < 1:
        raise ValueError(f"need num_steps >= 0, log_every >= 1, checkpoint_every >= 1; got {num_steps}, "
                         f"{log_every}, {checkpoint_every}")
    if not 0 <= max_skipped_fraction <= 1:
        raise ValueError(f"max_skipped_fraction must be in [0, 1], got {max_skipped_fraction!r}")
    if max_loss_growth is not None and not max_loss_growth > 1:
        raise ValueError(f"max_loss_growth must be > 1 or None, got {max_loss_growth!r}")
    start = _scalar_step(state)
    log = _TrainLog(workdir, start, num_steps, progress=progress, is_main_process=is_main_process)
    guard = _DivergenceGuard(start, num_steps, max_nonfinite, max_skipped_fraction, max_loss_growth, checkpointer)
    interrupted = False
    saved = {start}  # a step is written once (a signal can arrive on a checkpoint step)

    def save(step):
        if checkpointer is not None and step not in saved:
            checkpointer.save(step, state)
            saved.add(step)

    with _stop_on_signals() as stop:
        it = batches(start)
        for step in range(start + 1, num_steps + 1):
            state, metrics = train_step(state, put_batch(log.next_batch(it)))
            log.pending.append(metrics)
            if step == start + 1:
                guard.first_step(metrics)
            if step % log_every == 0 or step == num_steps:
                logged = log.flush(state, step)
                guard.check(state, step, log.window_start, logged)
                log.window_start = step
            for every, fn in hooks:
                if step % every == 0 or step == num_steps:
                    log.write(step, fn(state, step))
            if step % checkpoint_every == 0 and step != num_steps:
                save(step)
            log.tick()
            if stop["signal"] is not None:
                save(step)
                print(f"\n{stop['signal']} received: checkpoint written at step {step}; rerun the same "
                      f"command to resume.", file=sys.stderr, flush=True)
                interrupted = True
                break
        else:
            if start < num_steps:
                save(num_steps)
    log.close()
    return state, interrupted
