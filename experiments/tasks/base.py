"""What a family gives the generic experiment runner (``experiments/run.py``).

Each ``experiments/tasks/<family>.py`` has one function ``build(config, data) -> Task``; it unpacks
the config into explicit keyword arguments for the library (gen_jax never sees a config object).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator

import jax

from gen_jax.data.toy import ToyDistribution


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What the data looks like, for building models.

    Attributes:
      kind: ``'toy'`` (float [B, 2] in ``batch['x']``) or ``'image'`` (uint8 [B, H, W, C] and int32
        labels).
      shape: shape of one example.
      name: dataset name.
      num_classes: number of labels (images), else 0.
      toy: the toy distribution (toy data only).
      num_train: number of training examples (images), else None.
    """

    kind: str
    shape: tuple[int, ...]
    name: str
    num_classes: int = 0
    toy: ToyDistribution | None = None
    num_train: int | None = None


@dataclasses.dataclass(frozen=True)
class Task:
    """A family's pieces, ready to train and evaluate.

    Attributes:
      init: ``key -> state`` (TrainState or TwoPlayerState, with a leading replica axis when the
        config trains several seeds at once).
      train_step: compiled ``(state, batch) -> (state, metrics)``.
      sample: ``(state, key, n) -> [n, *shape]`` samples in data space (toy: coordinates; images:
        floats in [0, 1]); with replicas ``[K, n, *shape]``.
      evaluate: ``(state, key, eval_batches) -> {name: float}`` (e.g. test ``nll_nats``).
      log_density: ``(state, x [N, 2]) -> log p(x) [N]`` for toy data when the family has one.
      figures: ``(state, key, outdir) -> [png paths]``: extra family pictures.
    """

    init: Callable[[jax.Array], Any]
    train_step: Callable[[Any, Any], tuple[Any, dict]]
    sample: Callable[[Any, jax.Array, int], jax.Array]
    evaluate: Callable[[Any, jax.Array, Iterable[dict]], dict]
    log_density: Callable[[Any, jax.Array], jax.Array] | None = None
    figures: Callable[[Any, jax.Array, str], list[str]] | None = None


EvalBatches = Callable[[], Iterator[dict]]
