"""What a family builder gives the generic runner (``experiments/run.py``), and what the runner gives
evaluators and figures.

Each ``experiments/tasks/<family>.py`` has one function ``build(config, data) -> Experiment``: it
unpacks the config into the family's :mod:`gen_jax.model` object (gen_jax never sees a config) and says
how one seed's training state is initialised. Everything else is generic: the runner replicates seeds,
compiles the step, and hands a :class:`Context` to the evaluators (``experiments/evaluators``) and
figures (``experiments/figures``) the config names in ``eval.evaluators`` and ``eval.figures``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import jax
import numpy as np

from gen_jax.data.toy import ToyDistribution
from gen_jax.precision import Policy

PyTree = Any


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What the data looks like, for building models.

    Attributes:
      kind: ``'toy'`` (float [B, 2] in ``batch['x']``, drawn from a known distribution), ``'points'``
        (float [B, D] read from a file) or ``'image'`` (uint8 [B, H, W, C] and int32 labels).
      shape: shape of one example.
      name: dataset name (a toy or tfds name, or the path of the user's file or folder).
      num_classes: number of labels, else 0.
      toy: the toy distribution (toy data only).
      num_train: number of training examples (read data), else None.
      data_dir: where the tfds data lie.
      train: the training split's source (:class:`gen_jax.data.Source`; read data), for builders and
        evaluators that read it (data-dependent initialisation, the Frechet classifier).
      fingerprint: what the run reads: ``{'train': ..., 'test': ...}`` of ``Source.fingerprint()``.
    """

    kind: str
    shape: tuple[int, ...]
    name: str
    num_classes: int = 0
    toy: ToyDistribution | None = None
    num_train: int | None = None
    data_dir: str | None = None
    train: Any = dataclasses.field(default=None, compare=False, repr=False)
    fingerprint: dict | None = dataclasses.field(default=None, compare=False)

    @property
    def is_vector(self) -> bool:
        """Examples are vectors [D] (toy or points data), modelled by MLPs."""
        return self.kind in ("toy", "points")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A family's model, ready for the runner.

    Attributes:
      model: a :class:`gen_jax.model.GenerativeModel` or :class:`gen_jax.model.TwoPlayerModel`.
      init_state: ``key -> TrainState | TwoPlayerState`` of ONE seed (the runner vmaps it over seeds).
      sample_options: keyword arguments of ``model.sample`` for the samples the run shows and scores.
      log_density: ``(params, x [N, 2]) -> log p(x) [N]`` for toy density panels, where the family has one.
      density_resolution: the side of the panel's grid of log_density points (fewer where each point costs
        an ODE solve).
    """

    model: Any
    init_state: Callable[[jax.Array], Any]
    sample_options: dict = dataclasses.field(default_factory=dict)
    log_density: Callable[[PyTree, jax.Array], jax.Array] | None = None
    density_resolution: int = 200


@dataclasses.dataclass
class Context:
    """The trained run as evaluators and figures see it. Seeds are explicit: ``params[s]`` is seed ``s``'s
    evaluation parameters (the EMA where there is one) and ``sample(key, n)`` is ``[num_seeds, n, ...]``.

    Attributes:
      model: the family's model object.
      data: the data spec.
      options: ``config.eval``.
      params: per seed, the parameters to evaluate (``state.eval_params``).
      model_state: per seed, the model's non-trainable state.
      sample: ``(key, n) -> np.ndarray [num_seeds, n, *shape]`` in data space (one compiled program
        for all seeds: seed ``s`` uses ``split(key, num_seeds)[s]``, or ``key`` itself for one seed).
      batches: ``() -> iterator`` over the held-out batches (raw, as the training batches).
      num_batches: their number.
      sample_options: as in :class:`Experiment`.
      log_density, density_resolution: as in :class:`Experiment`.
    """

    model: Any
    data: DataSpec
    options: Any
    params: list[PyTree]
    model_state: list[PyTree]
    sample: Callable[[jax.Array, int], np.ndarray]
    batches: Callable[[], Iterator[dict]]
    num_batches: int
    sample_options: dict = dataclasses.field(default_factory=dict)
    log_density: Callable[[PyTree, jax.Array], jax.Array] | None = None
    density_resolution: int = 200

    @property
    def num_seeds(self) -> int:
        return len(self.params)


def precision_policy(config) -> Policy:
    """The networks' compute dtype of ``config.train.precision`` (:mod:`gen_jax.precision`; default float32)."""
    return Policy(str(config.train.get("precision", "float32")))
