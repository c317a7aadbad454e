"""Train and evaluate any family from a config: ``train_and_evaluate(config, workdir)``.

The workdir holds ``config.json``, ``checkpoints/`` (orbax), ``metrics.jsonl``, ``samples/*.png``,
``curves.png``, family figures, ``summary.json`` and ``report.md``. Rerunning with the same workdir
resumes from the latest checkpoint; ``restart=True`` deletes the checkpoints first.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import shutil
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from experiments import evaluators as evaluators_lib
from experiments import figures as figures_lib
from experiments import outputs
from experiments.seeds import Seeds
from experiments.tasks.base import Context, DataSpec, Experiment
from experiments.configs.common import resolve_eval
from gen_jax.data import images as image_data
from gen_jax.data import sources
from gen_jax.data import toy as toy_data
from gen_jax.data.pipeline import Batches
from gen_jax.precision import PRECISIONS
from gen_jax.train import (REPLICA_MAPS, CheckpointError, Checkpointer, DivergedError, Interrupted, fit,
                           interrupt_on_signals, json_dumps, keep_state_sharding, local_replica, make_mesh,
                           replicate, shard_batch, shard_state, with_progress)
from gen_jax.train.parallel import check_batch_size

# family name -> module with ``build(config, data) -> Experiment`` (explicit; nothing registers itself)
FAMILIES = {
    "flow": "experiments.tasks.flows",
    "diffusion": "experiments.tasks.diffusion",
    "vae": "experiments.tasks.vae",
    "gan": "experiments.tasks.gan",
}


class ConfigError(ValueError):
    """A config value is invalid; the message names the key, the value and what is expected."""


def _require(config, key: str, ok, expected: str) -> None:
    node = config
    for part in key.split("."):
        if part not in node:
            raise ConfigError(f"config.{key} is missing; expected {expected}")
        node = node[part]
    try:
        good = ok(node)
    except TypeError:
        good = False
    if not good:
        raise ConfigError(f"config.{key} = {node!r} is invalid; expected {expected}")


def validate_config(config: config_dict.ConfigDict) -> None:
    """Checks the common part of a config before anything is built or trained."""
    _require(config, "family", lambda v: v in FAMILIES, f"one of {sorted(FAMILIES)}")
    _require(config, "seed", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
    _require(config, "num_seeds", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
    _require(config, "replica_map", lambda v: v in REPLICA_MAPS, f"one of {REPLICA_MAPS}")
    _require(config, "data.name", lambda v: isinstance(v, str) and v,
             f"a toy dataset ({', '.join(sorted(toy_data.TOY_DATASETS))}), a tfds dataset, or the path of a "
             f".npy/.npz file or an image folder")
    for k in ("data.batch_size", "data.eval_batch_size", "train.num_steps", "train.log_every",
              "train.checkpoint_every", "train.keep_checkpoints", "train.max_nonfinite"):
        _require(config, k, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
    _require(config, "data.holdout", lambda v: 0 < v < 1, "a fraction in (0, 1)")
    _require(config, "data.image_size", lambda v: v is None or (isinstance(v, int) and v >= 1),
             "None or an integer >= 1")
    _require(config, "data.random_flip", lambda v: isinstance(v, bool), "True or False")
    for k in ("train.eval_every", "train.sample_every", "optim.warmup_steps", "data.num_threads", "data.prefetch",
              "data.num_workers"):
        _require(config, k, lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
    _require(config, "data.num_eval", lambda v: isinstance(v, int) and (v >= 1 or v == -1),
             "an integer >= 1, or -1 for the whole test split")
    _require(config, "train.shard_params", lambda v: isinstance(v, bool), "True or False")
    _require(config, "train.precision", lambda v: v in PRECISIONS, f"one of {PRECISIONS}")
    _require(config, "optim.optimizer", lambda v: v in ("adam", "adamw", "sgd"), "one of 'adam', 'adamw', 'sgd'")
    _require(config, "optim.schedule", lambda v: v in ("constant", "cosine"), "'constant' or 'cosine'")
    _require(config, "optim.learning_rate", lambda v: math.isfinite(v) and v > 0, "a number > 0")
    _require(config, "optim.ema_decay", lambda v: 0 <= v < 1, "a number in [0, 1)")
    _require(config, "optim.grad_clip", lambda v: v >= 0, "a number >= 0 (0: no clipping)")
    _require(config, "optim.weight_decay", lambda v: v >= 0, "a number >= 0")
    _require(config, "train.max_skipped_fraction", lambda v: 0 <= v <= 1, "a number in [0, 1]")
    _require(config, "train.max_loss_growth", lambda v: v == 0 or v > 1, "a number > 1, or 0 for no loss check")


def make_data(config) -> tuple[DataSpec, Any, Any, int]:
    """``(spec, train_batches(start_step) -> iterator, eval_batches() -> iterator, number of eval
    batches)`` for a config."""
    d = config.data
    if d.name in toy_data.TOY_DATASETS:
        dist = toy_data.get_toy(d.name)
        train = toy_data.ToyBatches(dist, d.batch_size, seed=config.seed,
                                    process_index=jax.process_index(), num_processes=jax.process_count())
        held_out = toy_data.ToyBatches(dist, d.eval_batch_size, seed=config.seed + 100_003)
        num_eval = max(1, d.num_eval // d.eval_batch_size) if d.num_eval > 0 else 20

        def eval_batches():
            return (held_out.batch_at(i) for i in range(num_eval))

        return DataSpec(kind="toy", shape=(2,), name=d.name, toy=dist), train, eval_batches, num_eval
    splits = sources.open_source(d.name, data_dir=d.data_dir, train_split=d.train_split, test_split=d.test_split,
                                 image_size=d.image_size, holdout=d.holdout)
    test = splits.test
    if 0 < d.num_eval < len(test):
        test = sources.Subset(test, np.arange(d.num_eval), f"first {d.num_eval}")
    stream = dict(num_threads=d.num_threads, prefetch=d.prefetch, num_workers=d.num_workers)
    train = Batches(splits.train, d.batch_size, seed=config.seed, random_flip=d.random_flip,
                    process_index=jax.process_index(), num_processes=jax.process_count(), **stream)
    held_out = Batches(test, min(d.eval_batch_size, len(test)), shuffle=False, **stream)
    spec = DataSpec(kind=splits.train.kind, shape=splits.train.shape, name=d.name,
                    num_classes=splits.train.num_classes, num_train=len(splits.train), data_dir=d.data_dir,
                    train=splits.train, fingerprint={"train": splits.train.fingerprint(), "test": test.fingerprint()})
    return spec, train, held_out.epoch, held_out.steps_per_epoch


def build_experiment(config, data: DataSpec) -> Experiment:
    """The family builder's :class:`Experiment` for ``config``."""
    return importlib.import_module(FAMILIES[config.family]).build(config, data)


def build_seeds(config, data: DataSpec) -> Seeds:
    """The experiment of ``config`` with its ``config.num_seeds`` seeds."""
    return Seeds(build_experiment(config, data), int(config.num_seeds),
                 str(config.get("replica_map", "auto")))


@dataclasses.dataclass
class RunResult:
    """A finished (or interrupted) run: its summary, seeds, final state and the evaluation context."""

    summary: dict
    seeds: Seeds
    state: Any
    ctx: Context
    interrupted: bool


def _checksum(state) -> float:
    """sum |x| over the float leaves of the state: a cheap fingerprint to compare runs/processes."""
    leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    return float(sum(float(jnp.sum(jnp.abs(x))) for x in leaves))


class WorkdirError(ValueError):
    """The workdir cannot be used (a file, not writable); the message names it and the reason."""


def check_workdir(workdir: str) -> None:
    """Refuses a workdir that is a file or lies under one, or whose nearest existing folder is not
    writable (writes nothing: creating it waits until every check has passed)."""
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(f"workdir {workdir} is a file, not a folder; give a folder (it is created if missing)")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise WorkdirError(f"workdir {workdir} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WorkdirError(f"workdir {workdir} is not writable ({existing} is read-only for this user)")


@dataclasses.dataclass
class Prepared:
    """Everything a run needs, built and checked before anything is written (see :func:`prepare`)."""

    config: config_dict.ConfigDict
    workdir: str
    restart: bool
    mesh: Any
    data: DataSpec
    train_batches: Any
    seeds: Seeds
    ctx: Context  # what evaluators and figures see; its parameters are set after training
    evaluators: list
    figures: list
    state: Any
    checkpointer: Checkpointer
    resumed_from: int | None
    corrupt: list  # CorruptCheckpointError of newer checkpoints skipped in favour of an intact one

    def describe(self) -> str:
        """What running would do, in a few lines (``--dry_run``)."""
        c = self.config
        lines = [f"family {c.family}, data {self.data.name} {list(self.data.shape)}"
                 + (f" ({self.data.num_train} training examples)" if self.data.num_train else ""),
                 f"parameters: {_num_params(self.state)}" + (f" ({c.num_seeds} seeds)" if c.num_seeds > 1 else ""),
                 f"{c.train.num_steps} steps at batch {c.data.batch_size} on {self.mesh.devices.size} device(s)",
                 f"evaluators: {', '.join(c.eval.evaluators) or '-'}; figures: {', '.join(c.eval.figures) or '-'}"]
        lines[1:1] = [f"{split} data: {fp['name']}, {fp['examples']} examples, sha256 {fp['sha256'][:16]}..."
                      for split, fp in (self.data.fingerprint or {}).items()]
        if self.restart:
            lines.append(f"--restart: would delete {self.checkpointer.directory} and start at step 0")
        elif self.resumed_from is not None:
            lines.append(f"would resume from checkpoint step {self.resumed_from} in {self.checkpointer.directory}")
        else:
            lines.append(f"would start at step 0 in {os.path.abspath(self.workdir)}")
        for e in self.corrupt:
            lines.append(f"would move corrupt checkpoint step {e.step} aside: {'; '.join(e.problems)}")
        return "\n".join(lines)


def _num_params(state) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(state.params)))


_RESTART_HINT = "Use another --workdir, or --restart to start over (it deletes the checkpoints)."


def prepare(config: config_dict.ConfigDict, workdir: str, *, restart: bool = False) -> Prepared:
    """Checks everything a run depends on and builds it, writing nothing: the config, the workdir, the
    devices, the data, the model and, unless ``restart``, the checkpoint it would resume from (verified
    and compatible; corrupt newer ones are noted to be moved aside)."""
    validate_config(config)
    check_workdir(workdir)
    mesh = make_mesh()
    check_batch_size(config.data.batch_size, mesh)
    try:
        data, train_batches, eval_batches, num_eval_batches = make_data(config)
    except image_data.DatasetNotFoundError as e:
        raise image_data.DatasetNotFoundError(f"{e} (data_dir: --config.data.data_dir=DIR)") from None
    except sources.DataError as e:
        raise sources.DataError(f"{e} (--config.data.name={config.data.name})") from None
    resolve_eval(config, data.kind, data.num_classes)
    if "inception" in config.eval.evaluators and not config.eval.get("inception_stats_dir", None):
        config.eval.inception_stats_dir = os.path.join(os.path.abspath(workdir), "inception_stats")
    seeds = build_seeds(config, data)
    ctx = seeds.context(data, config.eval, eval_batches, num_eval_batches)
    evaluators = evaluators_lib.build(tuple(config.eval.evaluators), config.eval, ctx)
    figures = figures_lib.check(tuple(config.eval.figures))
    init_key = jax.random.split(jax.random.key(config.seed), 3)[0]
    state = seeds.init(init_key)
    checkpointer = Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                max_to_keep=config.train.keep_checkpoints,
                                run_info=_run_info(config, data))
    resumed_from, corrupt = None, []
    if not restart:
        try:
            found = checkpointer.restore_latest_intact(state)
        except CheckpointError as e:
            raise type(e)(f"{e}. {_RESTART_HINT}") from None
        if found.state is not None:
            state, resumed_from = found.state, found.step
        corrupt = found.corrupt
    return Prepared(config, workdir, restart, mesh, data, train_batches, seeds, ctx, evaluators, figures, state,
                    checkpointer, resumed_from, corrupt)


def _run_info(config, data: DataSpec) -> dict:
    """What a checkpoint records of its run and a resumed run must match: the family and the data (by
    content: the training split's hash, where the data are read rather than drawn)."""
    if data.fingerprint:  # by content: the same data under another path is the same data
        return {"family": config.family, "data_sha256": data.fingerprint["train"]["sha256"]}
    return {"family": config.family, "data": config.data.name}


def _commit(p: Prepared, main: bool) -> None:
    """The run's first writes, once every check has passed: the workdir, --restart's deletion, corrupt
    checkpoints moved aside, config.json."""
    if not main:
        return
    try:
        os.makedirs(p.workdir, exist_ok=True)
        if p.restart and os.path.exists(p.checkpointer.directory):
            shutil.rmtree(p.checkpointer.directory)
            p.checkpointer.close()
            p.checkpointer = Checkpointer(p.checkpointer.directory, max_to_keep=p.config.train.keep_checkpoints,
                                          run_info=p.checkpointer.run_info)
        for e in p.corrupt:
            moved = p.checkpointer.quarantine(e.step)
            print(f"warning: checkpoint step {e.step} is corrupt ({'; '.join(e.problems)}); moved to {moved}",
                  file=sys.stderr, flush=True)
        with open(os.path.join(p.workdir, "config.json"), "w") as f:
            f.write(p.config.to_json_best_effort(indent=2))
    except OSError as e:
        raise WorkdirError(f"cannot write to workdir {p.workdir}: {e.strerror or e} ({e.filename or p.workdir})") \
            from None


def _check_finite_evaluation(summary: dict) -> None:
    bad = {k: v for k, v in summary.get("eval", {}).items() if not math.isfinite(v)}
    if bad:
        raise DivergedError(f"the final evaluation is not finite ({', '.join(f'{k} = {v}' for k, v in bad.items())}) "
                            f"after {summary['steps']} steps: the model diverged. Try a lower learning rate "
                            f"(config.optim.learning_rate) or gradient clipping (config.optim.grad_clip).")


class _Evaluations:
    """The periodic sample/eval hooks and the final evaluation of one run: they share its keys (the
    evaluation at the last step reuses the final evaluation's key, and its result) and held-out data."""

    def __init__(self, p: Prepared, *, main: bool, progress: bool):
        self.p, self.main, self.progress = p, main, progress
        _, self.sample_key, self.eval_key = jax.random.split(jax.random.key(p.config.seed), 3)
        self.batches = p.ctx.batches
        self.show = 64 if p.data.kind == "image" else 2000  # samples in the pictures of samples/
        self.at_last_step: dict | None = None

    def evaluate(self, state, key, announce: bool) -> dict:
        p = self.p
        p.seeds.update(p.ctx, local_replica(state))  # on every process: gathering sharded params is collective
        p.ctx.batches = lambda: with_progress(self.batches(), p.ctx.num_batches, "evaluating",
                                              enabled=announce and self.main)
        return evaluators_lib.evaluate(p.evaluators, p.ctx, key)

    def sample_hook(self, state, step: int) -> None:
        self.p.seeds.update(self.p.ctx, local_replica(state))
        if self.main:
            outputs.save_samples(self.p.ctx, jax.random.fold_in(self.sample_key, step), self.show,
                                 os.path.join(self.p.workdir, "samples", f"step_{step:07d}.png"))

    def eval_hook(self, state, step: int) -> dict:
        if step == self.p.config.train.num_steps:
            self.at_last_step = out = self.evaluate(state, self.eval_key, self.progress)
        else:
            out = self.evaluate(state, jax.random.fold_in(self.eval_key, step), False)
        return {f"eval_{k}": v for k, v in out.items()}

    def hooks(self) -> list:
        t = self.p.config.train
        return ([(t.sample_every, self.sample_hook)] if t.sample_every else []) + \
               ([(t.eval_every, self.eval_hook)] if t.eval_every else [])

    def final(self, state, summary: dict) -> None:
        """Evaluates ``state`` into ``summary`` and writes samples.png, the curves, the figures,
        summary.json and report.md (on the main process)."""
        p, workdir = self.p, self.p.workdir
        if self.progress and self.main:
            print("final evaluation ...", file=sys.stderr, flush=True)
        t_eval = time.perf_counter()
        done = self.at_last_step if summary["steps"] == p.config.train.num_steps else None
        summary["eval"] = done or self.evaluate(state, self.eval_key, self.progress)
        if p.data.kind == "toy":
            summary["entropy_nats"] = p.data.toy.entropy
        if self.main:
            outputs.save_samples(p.ctx, self.sample_key, 64 if p.data.kind == "image" else p.config.eval.num_samples,
                                 os.path.join(workdir, "samples.png"), density=True)
            outputs.save_curves(workdir, p.config.family)
            summary["figures"] = outputs.save_figures(p.figures, p.ctx, jax.random.fold_in(self.sample_key, 1),
                                                      workdir)
        summary["eval_time_s"] = round(time.perf_counter() - t_eval, 2)
        if self.main:
            with open(os.path.join(workdir, "summary.json"), "w") as f:
                f.write(json_dumps(summary, indent=2))
            outputs.write_report(p.config, summary, workdir)
            if self.progress:
                print(f"final evaluation done in {summary['eval_time_s']} s", file=sys.stderr, flush=True)


def _train(p: Prepared, evals: _Evaluations, *, main: bool, progress: bool):
    """Runs :func:`fit` from the prepared state; returns ``(state, interrupted, seconds)``."""
    config, mesh = p.config, p.mesh
    state = shard_state(p.state, mesh) if config.train.shard_params else replicate(p.state, mesh)
    t0 = time.perf_counter()
    try:
        state, interrupted = fit(
            state, keep_state_sharding(p.seeds.train_step, state, mesh), p.train_batches,
            num_steps=config.train.num_steps, workdir=p.workdir, checkpointer=p.checkpointer,
            checkpoint_every=config.train.checkpoint_every, log_every=config.train.log_every, hooks=evals.hooks(),
            max_nonfinite=config.train.max_nonfinite, max_skipped_fraction=config.train.max_skipped_fraction,
            max_loss_growth=config.train.max_loss_growth or None,
            put_batch=lambda b: shard_batch(b, mesh, 0), progress=progress, is_main_process=main)
    except DivergedError as e:
        raise type(e)(f"{e} (config: optim.learning_rate, optim.grad_clip; the limits: train.max_nonfinite, "
                      f"train.max_skipped_fraction, train.max_loss_growth)") from None
    return state, interrupted, time.perf_counter() - t0


def train_and_evaluate(config: config_dict.ConfigDict, workdir: str, *, restart: bool = False,
                       progress: bool = True) -> RunResult:
    """Trains ``config`` in ``workdir`` (resuming from the newest intact checkpoint if there is one) and
    evaluates the result. Everything is checked (:func:`prepare`) before the first write.

    Raises:
      ConfigError, WorkdirError, CheckpointError, DatasetNotFoundError, ValueError: bad input, found
        before anything was written.
      DivergedError: training diverged, or the final evaluation is not finite (summary.json is
        written first, with ``null`` for the non-finite values).
    """
    p = prepare(config, workdir, restart=restart)
    main = jax.process_index() == 0
    _commit(p, main)
    if progress and main and p.resumed_from is not None:
        note = " (the newest intact checkpoint)" if p.corrupt else ""
        print(f"resuming {workdir} from step {p.resumed_from}{note}", flush=True)
    evals = _Evaluations(p, main=main, progress=progress)
    state, interrupted, train_time = _train(p, evals, main=main, progress=progress)
    p.checkpointer.close()
    state = local_replica(state)
    p.seeds.update(p.ctx, state)
    summary = {"family": config.family, "data": config.data.name, "steps": int(np.max(jax.device_get(state.step))),
               "train_time_s": round(train_time, 2), "resumed_from": p.resumed_from, "interrupted": interrupted,
               "params_checksum": _checksum(state)}
    if p.data.fingerprint:
        summary["data_fingerprint"] = p.data.fingerprint
    if p.corrupt:
        summary["corrupt_checkpoints_skipped"] = [e.step for e in p.corrupt]
    if interrupted:
        return RunResult(summary, p.seeds, state, p.ctx, interrupted)
    try:
        with interrupt_on_signals():
            evals.final(state, summary)
    except Interrupted as e:
        if main:
            print(f"\n{e.args[0]} received during the final evaluation: training is complete and "
                  f"checkpointed at step {summary['steps']}; rerun the same command to evaluate "
                  f"(nothing is retrained).", file=sys.stderr, flush=True)
        summary["interrupted"] = True
        return RunResult(summary, p.seeds, state, p.ctx, True)
    _check_finite_evaluation(summary)
    return RunResult(summary, p.seeds, state, p.ctx, interrupted)
