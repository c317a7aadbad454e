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

from experiments.tasks.base import DataSpec, Task
from gen_jax import viz
from gen_jax.data import images as image_data
from gen_jax.data import toy as toy_data
from gen_jax.metrics import mode_coverage
from gen_jax.train import (CheckpointError, Checkpointer, DivergedError, Interrupted, fit, interrupt_on_signals,
                           json_dumps, keep_state_sharding, local_replica, make_mesh, read_metrics, replicate,
                           shard_batch, shard_state, with_progress)
from gen_jax.train.parallel import check_batch_size

# family name -> module with ``build(config, data) -> Task`` (explicit; nothing registers itself)
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
    names = sorted(toy_data.TOY_DATASETS) + list(image_data.IMAGE_DATASETS)
    _require(config, "data.name", lambda v: v in names, f"one of {names}")
    for k in ("data.batch_size", "data.eval_batch_size", "train.num_steps", "train.log_every",
              "train.checkpoint_every", "train.keep_checkpoints", "train.max_nonfinite"):
        _require(config, k, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
    for k in ("train.eval_every", "train.sample_every", "optim.warmup_steps"):
        _require(config, k, lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
    _require(config, "data.num_eval", lambda v: isinstance(v, int) and (v >= 1 or v == -1),
             "an integer >= 1, or -1 for the whole test split")
    _require(config, "train.shard_params", lambda v: isinstance(v, bool), "True or False")
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
    x_train, y_train = image_data.load_tfds(d.name, "train", d.data_dir)
    x_test, y_test = image_data.load_tfds(d.name, "test", d.data_dir)
    if d.num_eval > 0:
        x_test, y_test = x_test[:d.num_eval], y_test[:d.num_eval]
    train = image_data.ImageBatches(x_train, y_train, d.batch_size, seed=config.seed,
                                    process_index=jax.process_index(), num_processes=jax.process_count())
    test = image_data.ImageBatches(x_test, y_test, min(d.eval_batch_size, len(x_test)), shuffle=False)
    spec = DataSpec(kind="image", shape=tuple(x_train.shape[1:]), name=d.name,
                    num_classes=int(y_train.max()) + 1, num_train=len(x_train))
    return spec, train, test.epoch, test.steps_per_epoch


def build_task(config, data: DataSpec) -> Task:
    return importlib.import_module(FAMILIES[config.family]).build(config, data)


@dataclasses.dataclass
class RunResult:
    summary: dict
    task: Task
    state: Any
    data: DataSpec
    interrupted: bool


def _replicated_axis(samples: np.ndarray, data: DataSpec) -> bool:
    return samples.ndim == len(data.shape) + 2


def _save_samples(task: Task, state, key, data: DataSpec, n: int, path: str, log_density=None) -> np.ndarray:
    samples = np.asarray(jax.device_get(task.sample(state, key, n)))
    shown = samples[0] if _replicated_axis(samples, data) else samples
    if data.kind == "image":
        viz.save_image_grid(shown[:64], path)
    else:
        real = np.asarray(data.toy.sample(jax.random.key(1), len(shown)))
        viz.save_panel([{"title": f"data ({data.name})", "samples": real, "log_density": data.toy.log_prob},
                        {"title": "samples", "samples": shown, "log_density": log_density}],
                       path, data.toy.bounds)
    return samples


def _checksum(state) -> float:
    """sum |x| over the float leaves of the state: a cheap fingerprint to compare runs/processes."""
    leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    return float(sum(float(jnp.sum(jnp.abs(x))) for x in leaves))


def _toy_scores(samples: np.ndarray, data: DataSpec) -> dict:
    dist = data.toy
    if getattr(dist, "std", None) is None:
        return {}
    per = samples if _replicated_axis(samples, data) else samples[None]
    scores = [mode_coverage(s, dist.means, dist.std) for s in per]
    out = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
    if len(scores) > 1:
        out.update({f"{k}_std": float(np.std([s[k] for s in scores])) for k in ("modes", "hq_percent")})
    return out


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
    eval_batches: Any
    num_eval_batches: int
    task: Task
    state: Any
    checkpointer: Checkpointer
    resumed_from: int | None
    corrupt: list  # CorruptCheckpointError of newer checkpoints skipped in favour of an intact one

    def describe(self) -> str:
        """What running would do, in a few lines (``--dry_run``)."""
        c = self.config
        lines = [f"family {c.family}, data {self.data.name} {list(self.data.shape)}"
                 + (f" ({self.data.num_train} training examples)" if self.data.num_train else ""),
                 f"parameters: {_num_params(self.state)}",
                 f"{c.train.num_steps} steps at batch {c.data.batch_size} on {self.mesh.devices.size} device(s)"]
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
    params = getattr(state, "params", None)
    if params is None:  # a two-player state
        params = {"g": state.g.params, "d": state.d.params}
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


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
    task = build_task(config, data)
    init_key = jax.random.split(jax.random.key(config.seed), 3)[0]
    state = task.init(init_key)
    checkpointer = Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                max_to_keep=config.train.keep_checkpoints,
                                run_info={"family": config.family, "data": config.data.name})
    resumed_from, corrupt = None, []
    if not restart:
        try:
            found = checkpointer.restore_latest_intact(state)
        except CheckpointError as e:
            raise type(e)(f"{e}. {_RESTART_HINT}") from None
        if found.state is not None:
            state, resumed_from = found.state, found.step
        corrupt = found.corrupt
    return Prepared(config, workdir, restart, mesh, data, train_batches, eval_batches, num_eval_batches, task,
                    state, checkpointer, resumed_from, corrupt)


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
    task, data, mesh, checkpointer = p.task, p.data, p.mesh, p.checkpointer
    if progress and main and p.resumed_from is not None:
        note = " (the newest intact checkpoint)" if p.corrupt else ""
        print(f"resuming {workdir} from step {p.resumed_from}{note}", flush=True)

    key = jax.random.key(config.seed)
    _, sample_key, eval_key = jax.random.split(key, 3)
    state = p.state
    state = shard_state(state, mesh) if config.train.shard_params else replicate(state, mesh)
    state_box = [state]  # the latest state, for the density plot
    log_density = None
    if task.log_density is not None and data.kind == "toy":
        log_density = lambda x: task.log_density(state_box[0], jnp.asarray(x))  # noqa: E731

    samples_dir = os.path.join(workdir, "samples")
    num_steps = config.train.num_steps
    final_eval: dict[int, dict] = {}  # the periodic evaluation at the last step is the final one

    def evaluate(st, key, announce: bool):
        batches = with_progress(p.eval_batches(), p.num_eval_batches, "evaluating", enabled=announce and main)
        return {k: float(v) for k, v in task.evaluate(st, key, batches).items()}

    def sample_hook(st, step):
        st = state_box[0] = local_replica(st)  # on every process: gathering sharded parameters is collective
        if main:
            _save_samples(task, st, jax.random.fold_in(sample_key, step), data, 64 if data.kind == "image"
                          else 2000, os.path.join(samples_dir, f"step_{step:07d}.png"))

    def eval_hook(st, step):
        if step == num_steps:  # the same key as the final evaluation, which then reuses the result
            final_eval[step] = out = evaluate(local_replica(st), eval_key, progress)
        else:
            out = evaluate(local_replica(st), jax.random.fold_in(eval_key, step), False)
        return {f"eval_{k}": v for k, v in out.items()}

    hooks = []
    if config.train.sample_every:
        hooks.append((config.train.sample_every, sample_hook))
    if config.train.eval_every:
        hooks.append((config.train.eval_every, eval_hook))
    batch_axis = 0
    t0 = time.perf_counter()
    try:
        state, interrupted = fit(
            state, keep_state_sharding(task.train_step, state, mesh), p.train_batches, num_steps=num_steps,
            workdir=workdir, checkpointer=checkpointer, checkpoint_every=config.train.checkpoint_every,
            log_every=config.train.log_every, hooks=hooks, max_nonfinite=config.train.max_nonfinite,
            max_skipped_fraction=config.train.max_skipped_fraction,
            max_loss_growth=config.train.max_loss_growth or None,
            put_batch=lambda b: shard_batch(b, mesh, batch_axis), progress=progress, is_main_process=main)
    except DivergedError as e:
        raise type(e)(f"{e} (config: optim.learning_rate, optim.grad_clip; the limits: train.max_nonfinite, "
                      f"train.max_skipped_fraction, train.max_loss_growth)") from None
    train_time = time.perf_counter() - t0
    checkpointer.close()
    state = state_box[0] = local_replica(state)
    summary = {"family": config.family, "data": config.data.name, "steps": int(np.max(jax.device_get(state.step))),
               "train_time_s": round(train_time, 2), "resumed_from": p.resumed_from, "interrupted": interrupted,
               "params_checksum": _checksum(state)}
    if p.corrupt:
        summary["corrupt_checkpoints_skipped"] = [e.step for e in p.corrupt]
    if interrupted:
        return RunResult(summary, task, state, data, interrupted)

    try:
        with interrupt_on_signals():
            if progress and main:
                print("final evaluation ...", file=sys.stderr, flush=True)
            t_eval = time.perf_counter()
            summary["eval"] = final_eval.get(summary["steps"]) or evaluate(state, eval_key, progress)
            _finish(config, workdir, task, state, data, sample_key, log_density, summary, main)
            summary["eval_time_s"] = round(time.perf_counter() - t_eval, 2)
            if main:
                with open(os.path.join(workdir, "summary.json"), "w") as f:
                    f.write(json_dumps(summary, indent=2))
                _write_report(config, summary, workdir)
                if progress:
                    print(f"final evaluation done in {summary['eval_time_s']} s", file=sys.stderr, flush=True)
    except Interrupted as e:
        if main:
            print(f"\n{e.args[0]} received during the final evaluation: training is complete and "
                  f"checkpointed at step {summary['steps']}; rerun the same command to evaluate "
                  f"(nothing is retrained).", file=sys.stderr, flush=True)
        summary["interrupted"] = True
        return RunResult(summary, task, state, data, True)
    _check_finite_evaluation(summary)
    return RunResult(summary, task, state, data, interrupted)


def _finish(config, workdir, task, state, data, sample_key, log_density, summary, main) -> None:
    """After the test metrics: samples, toy scores, curves, family figures."""
    if not main:
        return
    samples = _save_samples(task, state, sample_key, data,
                            64 if data.kind == "image" else config.eval.num_samples,
                            os.path.join(workdir, "samples.png"), log_density)
    if data.kind == "toy" and not any(k.startswith("modes") for k in summary["eval"]):
        summary["eval"].update(_toy_scores(samples, data))  # unless the task scored modes itself
        summary["entropy_nats"] = data.toy.entropy
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    if records:
        keys = dict.fromkeys(k for r in records for k in r)  # training metrics first, then eval_*
        loss_keys = [k for k in keys if k not in ("step", "steps_per_sec", "skipped")]
        viz.save_curves(records, loss_keys[:6], os.path.join(workdir, "curves.png"), title=config.family)
    if task.figures is not None:
        summary["figures"] = [os.path.relpath(p, workdir) for p in
                              task.figures(state, jax.random.fold_in(sample_key, 1), workdir)]


def _write_report(config, summary: dict, workdir: str) -> None:
    lines = [f"# {config.family} on {config.data.name}", "",
             f"steps: {summary['steps']}, train time: {summary['train_time_s']} s", "",
             "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4g} |" for k, v in summary["eval"].items()]  # nan/inf print as such
    if "entropy_nats" in summary:
        lines.append(f"| true entropy (nats) | {summary['entropy_nats']:.4g} |")
    lines += ["", "![samples](samples.png)", ""]
    if os.path.exists(os.path.join(workdir, "curves.png")):
        lines += ["![curves](curves.png)", ""]
    lines += [f"![{p}]({p})" for p in summary.get("figures", [])]
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
