"""The benchmark's one door to the family experiments (``experiments.run.build_seeds`` and what it returns).

Every other benchmark module reaches a task, its state and its data only through the functions here,
so a change of the task interface (``experiments/tasks``, ``experiments/run.py``, ``gen_jax.train``)
is a change of this file alone. Tasks are built as a run builds them, from the family's experiment
config, but fed synthetic batches of the real shapes, so no dataset is read: image shapes and label
counts come from tfds's dataset metadata (the builder's code, no download), and a split of random
images of those shapes stands in for the training split while a task initialises.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING, Any, Callable, Iterator

import jax
import numpy as np

from experiments.benchmark.configs import with_overrides

if TYPE_CHECKING:
    from experiments.seeds import Seeds as Task  # a family's experiment with its seeds
    from experiments.tasks.base import DataSpec


def family_module(family: str) -> str:
    """The module of a family's task (``experiments.run.FAMILIES``)."""
    from experiments.run import FAMILIES

    return FAMILIES[family]


def import_family(family: str) -> None:
    """Imports a family's task module.

    Raises:
      ImportError: the module, or a library module it needs, is not there (an unfinished family).
    """
    importlib.import_module(family_module(family))


@functools.cache
def image_info(name: str) -> tuple[tuple[int, ...], int]:
    """``(example shape [H, W, C], number of labels)`` of a tfds image dataset, from the metadata
    tfds's builder code declares (read without the dataset on disk and without a download)."""
    import tensorflow_datasets as tfds

    features = tfds.builder(name).info.features
    return tuple(features["image"].shape), int(features["label"].num_classes)


def data_spec(config) -> DataSpec:
    """The ``DataSpec`` of a config's data, without reading any dataset: image shapes from tfds's
    metadata, and a training split of 512 uniform random images of that shape (for families that
    initialise from data, e.g. flows' ActNorm)."""
    from experiments.tasks.base import DataSpec
    from gen_jax.data import ArraySource
    from gen_jax.data import images as image_data
    from gen_jax.data import toy as toy_data

    name = config.data.name
    if name in toy_data.TOY_DATASETS:
        return DataSpec(kind="toy", shape=(2,), name=name, toy=toy_data.get_toy(name))
    if name not in image_data.IMAGE_DATASETS:
        raise ValueError(f"config data.name={name!r} is neither a toy dataset nor one of "
                         f"{list(image_data.IMAGE_DATASETS)}")
    shape, classes = image_info(name)
    host = example_batch(DataSpec(kind="image", shape=shape, name=name, num_classes=classes), 512)
    return DataSpec(kind="image", shape=shape, name=name, num_classes=classes, num_train=512,
                    train=ArraySource(host["x"], host["label"], name=f"random {name}-shaped images"))


def load(config, batch_size: int, num_seeds: int = 1) -> tuple[Task, DataSpec]:
    """``(task, data_spec)`` of ``config`` with the given batch size and number of seeds: the family's
    experiment with its seeds (``experiments.seeds.Seeds``: ``init``, ``train_step``, ``sample``)."""
    from experiments.run import build_seeds

    config = with_overrides(config, {"data.batch_size": batch_size, "num_seeds": num_seeds})
    data = data_spec(config)
    return build_seeds(config, data), data


def train_step(task: Task) -> Callable[[Any, Any], tuple[Any, dict]]:
    """The task's compiled ``step(state, batch) -> (state, metrics)``."""
    return task.train_step


def init_fn(task: Task) -> Callable[[jax.Array], Any]:
    """The task's ``init`` (jitted: one compilation instead of many eager ops)."""
    return task.init


def abstract_state(task: Task, key: jax.Array) -> Any:
    """The shapes and dtypes of the task's initial state (``jax.eval_shape``: no compute)."""
    return jax.eval_shape(task.init, key)


def param_trees(state) -> dict[str, Any]:
    """The trainable parameters of a (possibly abstract) state: ``{'params': tree}``, or
    ``{'G': tree, 'D': tree}`` for a two-player state."""
    if hasattr(state, "g") and hasattr(state, "d"):
        return {"G": state.g.params, "D": state.d.params}
    return {"params": state.params}


def state_step(state) -> int:
    """The step counter of a state (the first replica's, with a leading replica axis)."""
    return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])


def example_batch(data: DataSpec, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A host batch of the real structure: toy ``{'x': f32 [B, 2]}`` drawn from the toy distribution;
    images ``{'x': u8 [B, H, W, C], 'label': i32 [B]}`` of uniform random pixels and labels."""
    if data.kind == "toy":
        sample = jax.jit(data.toy.sample, static_argnums=1)
        return {"x": np.asarray(jax.device_get(sample(jax.random.key(seed), batch_size)), np.float32)}
    rng = np.random.default_rng(seed)
    return {"x": rng.integers(0, 256, size=(batch_size, *data.shape), dtype=np.uint8),
            "label": rng.integers(0, max(data.num_classes, 1), size=(batch_size,), dtype=np.int32)}


def batch_source(data: DataSpec, batch_size: int):
    """The batch source a run of this data uses (``ToyBatches`` / ``Batches`` over synthetic images),
    with its ``batch_at(step)``."""
    from gen_jax.data import ArraySource, Batches
    from gen_jax.data import toy as toy_data

    if data.kind == "toy":
        return toy_data.ToyBatches(data.toy, batch_size)
    host = example_batch(data, 2 * batch_size)
    return Batches(ArraySource(host["x"], host["label"]), batch_size, seed=0)


def run_loop(task: Task, state, batches: Callable[[int], Iterator[Any]], *, num_steps: int, log_every: int,
             put_batch: Callable[[Any], Any]) -> Any:
    """The runner's training loop (``gen_jax.train.fit``) over the task's step, without a workdir,
    checkpoints or progress bar, up to ``num_steps`` total steps; returns the state."""
    from gen_jax.train import fit

    state, _ = fit(state, train_step(task), batches, num_steps=num_steps, log_every=log_every, workdir=None,
                   checkpointer=None, progress=False, put_batch=put_batch)
    return state


def replicated(config, batch_size: int, k: int, replica_map: str = "auto") -> tuple[Callable, Callable]:
    """``(init_k, step_k)``: K seeds in one program, as runs train them (``config.num_seeds`` and
    ``config.replica_map``: the engine's step over a leading seed axis, for every family)."""
    task, _ = load(with_overrides(config, {"replica_map": replica_map}), batch_size, num_seeds=k)
    return init_fn(task), train_step(task)


def resolved_replica_map(config, how: str = "auto", batch_size: int = 2) -> str:
    """How K seeds of ``config`` share the program for ``config.replica_map = how`` (``'auto'`` resolved on
    one seed's train step, traced, not compiled: :func:`gen_jax.train.resolve_replica_map`)."""
    from gen_jax.train import resolve_replica_map

    task, data = load(config, batch_size)
    return resolve_replica_map(how, train_step(task), abstract_state(task, jax.random.key(0)),
                               example_batch(data, batch_size))
