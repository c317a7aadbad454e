"""Seeds, once for every family: ``config.num_seeds = K`` models trained at once in one program.

With K > 1 every leaf of the training state has a leading seed axis of size K, the step is
``make_*_step(..., replicas=True, replica_map=config.replica_map)`` (vmapped or unrolled over the seeds,
:func:`gen_jax.train.map_replicas`; sampling the same way), and seed ``s`` is initialised from
``split(key, K)[s]``. With K = 1 nothing has a seed axis. Which one a state is never has to be guessed:
:class:`Seeds` knows K, and what it gives evaluators and figures is per seed (a list, or an array whose
first axis is the seed).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import numpy as np

from experiments.tasks.base import Context, Experiment
from gen_jax.model import TwoPlayerModel
from gen_jax.train import make_train_step, make_two_player_step, map_replicas


@dataclasses.dataclass
class Seeds:
    """A family's :class:`Experiment` trained as ``num_seeds`` seeds at once.

    Attributes:
      experiment: the family's model and one seed's state initialisation.
      num_seeds: K.
      replica_map: how K > 1 seeds share the train step's and the sampler's program
        (:func:`gen_jax.train.map_replicas`: ``'auto'``, ``'vmap'`` or ``'unroll'``).
      train_step: the compiled ``step(state, batch) -> (state, metrics)`` (over the seeds if K > 1).
    """

    experiment: Experiment
    num_seeds: int
    replica_map: str = "auto"
    train_step: Callable = dataclasses.field(init=False)

    def __post_init__(self):
        if self.num_seeds < 1:
            raise ValueError(f"num_seeds must be >= 1, got {self.num_seeds}")
        model, replicas = self.experiment.model, self.num_seeds > 1
        if isinstance(model, TwoPlayerModel):
            self.train_step = make_two_player_step(model.d_loss, model.g_loss, n_critic=model.n_critic,
                                                   replicas=replicas, replica_map=self.replica_map)
        else:
            self.train_step = make_train_step(model.loss, replicas=replicas, replica_map=self.replica_map)
        one = functools.partial(_sample_one, model, tuple(sorted(self.experiment.sample_options.items())))
        if replicas:
            self._sample = jax.jit(lambda params, keys, n: map_replicas(
                functools.partial(one, n=n), (0, 0), self.replica_map)(params, keys), static_argnums=2)
        else:
            self._sample = jax.jit(one, static_argnums=2)

    @property
    def model(self) -> Any:
        return self.experiment.model

    def init(self, key: jax.Array) -> Any:
        """The training state of every seed (seed ``s`` from ``split(key, K)[s]``; K = 1: from ``key``)."""
        if self.num_seeds > 1:
            return jax.jit(jax.vmap(self.experiment.init_state))(jax.random.split(key, self.num_seeds))
        return jax.jit(self.experiment.init_state)(key)

    def per_seed(self, tree: Any) -> list:
        """``[tree of seed 0, tree of seed 1, ...]``."""
        if self.num_seeds == 1:
            return [tree]
        return [jax.tree.map(lambda a, s=s: a[s], tree) for s in range(self.num_seeds)]

    def sample(self, state: Any, key: jax.Array, n: int) -> np.ndarray:
        """``[K, n, ...]`` samples in data space from ``state.eval_params`` (seed ``s`` with
        ``split(key, K)[s]``; one seed: with ``key``)."""
        if self.num_seeds > 1:
            return np.asarray(jax.device_get(self._sample(state.eval_params, jax.random.split(key, self.num_seeds), n)))
        return np.asarray(jax.device_get(self._sample(state.eval_params, key, n)))[None]

    def context(self, data, options, batches=lambda: iter(()), num_batches: int = 0, state: Any = None) -> Context:
        """The :class:`Context` of evaluators and figures for this experiment (showing ``state`` if given)."""
        ctx = Context(model=self.model, data=data, options=options, params=[], model_state=[], sample=None,
                      batches=batches, num_batches=num_batches, sample_options=self.experiment.sample_options,
                      log_density=self.experiment.log_density,
                      density_resolution=self.experiment.density_resolution)
        return ctx if state is None else self.update(ctx, state)

    def update(self, ctx: Context, state: Any) -> Context:
        """``ctx`` showing ``state`` (its evaluation parameters, model state and samples)."""
        ctx.params = self.per_seed(state.eval_params)
        ctx.model_state = self.per_seed(state.model_state)
        ctx.sample = lambda key, n: self.sample(state, key, n)
        return ctx


def _sample_one(model, options: tuple, params, key, n: int):
    return model.sample(params, key, n, **dict(options))
