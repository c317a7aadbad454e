"""Train and evaluate any family from a config: ``train_and_evaluate(config, workdir)``.

The workdir holds ``config.json``, ``checkpoints/`` (orbax), ``metrics.jsonl``, ``samples/*.png``,
``curves.png``, family figures, ``summary.json`` and ``report.md``. Rerunning with the same workdir
resumes from the latest checkpoint; ``restart=True`` deletes the checkpoints first.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
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
from gen_jax.train import (Checkpointer, Interrupted, fit, interrupt_on_signals, keep_state_sharding,
                           local_replica, make_mesh, read_metrics, replicate, shard_batch, shard_state)
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
    _require(config, "optim.learning_rate", lambda v: math.isfinite(v) and v > 0, "a number > 0")
    _require(config, "optim.ema_decay", lambda v: 0 <= v < 1, "a number in [0, 1)")
    _require(config, "optim.grad_clip", lambda v: v >= 0, "a number >= 0 (0: no clipping)")
    _require(config, "optim.weight_decay", lambda v: v >= 0, "a number >= 0")


def make_data(config) -> tuple[DataSpec, Any, Any]:
    """``(spec, train_batches(start_step) -> iterator, eval_batches() -> iterator)`` for a config."""
    d = config.data
    if d.name in toy_data.TOY_DATASETS:
        dist = toy_data.get_toy(d.name)
        train = toy_data.ToyBatches(dist, d.batch_size, seed=config.seed,
                                    process_index=jax.process_index(), num_processes=jax.process_count())
        held_out = toy_data.ToyBatches(dist, d.eval_batch_size, seed=config.seed + 100_003)
        num_eval = max(1, d.num_eval // d.eval_batch_size) if d.num_eval > 0 else 20

        def eval_batches():
            return (held_out.batch_at(i) for i in range(num_eval))

        return DataSpec(kind="toy", shape=(2,), name=d.name, toy=dist), train, eval_batches
    x_train, y_train = image_data.load_tfds(d.name, "train", d.data_dir)
    x_test, y_test = image_data.load_tfds(d.name, "test", d.data_dir)
    if d.num_eval > 0:
        x_test, y_test = x_test[:d.num_eval], y_test[:d.num_eval]
    train = image_data.ImageBatches(x_train, y_train, d.batch_size, seed=config.seed,
                                    process_index=jax.process_index(), num_processes=jax.process_count())
    test = image_data.ImageBatches(x_test, y_test, min(d.eval_batch_size, len(x_test)), shuffle=False)
    spec = DataSpec(kind="image", shape=tuple(x_train.shape[1:]), name=d.name,
                    num_classes=int(y_train.max()) + 1, num_train=len(x_train))
    return spec, train, test.epoch


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


def train_and_evaluate(config: config_dict.ConfigDict, workdir: str, *, restart: bool = False,
                       progress: bool = True) -> RunResult:
    """Trains ``config`` in ``workdir`` (resuming if a checkpoint exists) and evaluates the result."""
    validate_config(config)
    mesh = make_mesh()
    check_batch_size(config.data.batch_size, mesh)
    data, train_batches, eval_batches = make_data(config)
    task = build_task(config, data)
    main = jax.process_index() == 0
    ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
    if restart and main and os.path.exists(ckpt_dir):
        shutil.rmtree(ckpt_dir)
    os.makedirs(workdir, exist_ok=True)
    if main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    key = jax.random.key(config.seed)
    init_key, sample_key, eval_key = jax.random.split(key, 3)
    state = task.init(init_key)
    checkpointer = Checkpointer(ckpt_dir, max_to_keep=config.train.keep_checkpoints,
                                run_info={"family": config.family, "data": config.data.name})
    resumed_from = checkpointer.latest_step()
    if resumed_from is not None:
        state, _ = checkpointer.restore(state)
        if progress and main:
            print(f"resuming {workdir} from step {resumed_from}", flush=True)
    state = shard_state(state, mesh) if config.train.shard_params else replicate(state, mesh)
    state_box = [state]  # the latest state, for the density plot
    log_density = None
    if task.log_density is not None and data.kind == "toy":
        log_density = lambda x: task.log_density(state_box[0], jnp.asarray(x))  # noqa: E731

    samples_dir = os.path.join(workdir, "samples")

    def sample_hook(st, step):
        st = state_box[0] = local_replica(st)  # on every process: gathering sharded parameters is collective
        if main:
            _save_samples(task, st, jax.random.fold_in(sample_key, step), data, 64 if data.kind == "image"
                          else 2000, os.path.join(samples_dir, f"step_{step:07d}.png"))

    def eval_hook(st, step):
        return {f"eval_{k}": v for k, v in task.evaluate(local_replica(st), jax.random.fold_in(eval_key, step),
                                                         eval_batches()).items()}

    hooks = []
    if config.train.sample_every:
        hooks.append((config.train.sample_every, sample_hook))
    if config.train.eval_every:
        hooks.append((config.train.eval_every, eval_hook))
    batch_axis = 0
    t0 = time.perf_counter()
    state, interrupted = fit(
        state, keep_state_sharding(task.train_step, state, mesh), train_batches, num_steps=config.train.num_steps, workdir=workdir,
        checkpointer=checkpointer, checkpoint_every=config.train.checkpoint_every,
        log_every=config.train.log_every, hooks=hooks, max_nonfinite=config.train.max_nonfinite,
        put_batch=lambda b: shard_batch(b, mesh, batch_axis), progress=progress, is_main_process=main)
    train_time = time.perf_counter() - t0
    checkpointer.close()
    state = state_box[0] = local_replica(state)
    summary = {"family": config.family, "data": config.data.name, "steps": int(np.max(jax.device_get(state.step))),
               "train_time_s": round(train_time, 2), "resumed_from": resumed_from, "interrupted": interrupted,
               "params_checksum": _checksum(state)}
    if interrupted:
        return RunResult(summary, task, state, data, interrupted)

    try:
        with interrupt_on_signals():
            _evaluate(config, workdir, task, state, data, eval_batches, eval_key, sample_key, log_density,
                      summary, main)
    except Interrupted as e:
        if main:
            print(f"\n{e.args[0]} received during the final evaluation: training is complete and "
                  f"checkpointed at step {summary['steps']}; rerun the same command to evaluate "
                  f"(nothing is retrained).", file=sys.stderr, flush=True)
        summary["interrupted"] = True
        return RunResult(summary, task, state, data, True)
    return RunResult(summary, task, state, data, interrupted)


def _evaluate(config, workdir, task, state, data, eval_batches, eval_key, sample_key, log_density, summary,
              main) -> None:
    """The final evaluation: test metrics, samples, curves, family figures, summary.json, report.md."""
    t0 = time.perf_counter()
    summary["eval"] = {k: float(v) for k, v in task.evaluate(state, eval_key, eval_batches()).items()}
    if main:
        samples = _save_samples(task, state, sample_key, data,
                                64 if data.kind == "image" else config.eval.num_samples,
                                os.path.join(workdir, "samples.png"), log_density)
        if data.kind == "toy" and not any(k.startswith("modes") for k in summary["eval"]):
            summary["eval"].update(_toy_scores(samples, data))  # unless the task scored modes itself
            summary["entropy_nats"] = data.toy.entropy
        records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
        if records:
            loss_keys = [k for k in records[-1] if k not in ("step", "steps_per_sec", "skipped")]
            viz.save_curves(records, loss_keys[:6], os.path.join(workdir, "curves.png"), title=config.family)
        if task.figures is not None:
            summary["figures"] = [os.path.relpath(p, workdir) for p in
                                  task.figures(state, jax.random.fold_in(sample_key, 1), workdir)]
    summary["eval_time_s"] = round(time.perf_counter() - t0, 2)
    if main:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        _write_report(config, summary, workdir)


def _write_report(config, summary: dict, workdir: str) -> None:
    lines = [f"# {config.family} on {config.data.name}", "",
             f"steps: {summary['steps']}, train time: {summary['train_time_s']} s", "",
             "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4g} |" for k, v in summary["eval"].items()]
    if "entropy_nats" in summary:
        lines.append(f"| true entropy (nats) | {summary['entropy_nats']:.4g} |")
    lines += ["", "![samples](samples.png)", ""]
    if os.path.exists(os.path.join(workdir, "curves.png")):
        lines += ["![curves](curves.png)", ""]
    lines += [f"![{p}]({p})" for p in summary.get("figures", [])]
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
