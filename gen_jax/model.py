"""The contract every family implements: a generative model is a small object of pure functions.

One fixed signature for every objective (Flax's ``mutable=`` pattern)::

    params, model_state = model.init(key, example_batch)
    loss, (metrics, model_state) = model.loss(params, model_state, batch, rng)
    x = model.sample(params, key, n, **options)        # data space: toy coordinates; images in [0, 1]

``params`` are the trainable parameters; ``model_state`` the non-trainable variables (Flax collections
other than ``'params'``, e.g. spectral normalisation's power-iteration vectors under
``'batch_stats'``), ``{}`` when a model has none. ``metrics`` are scalars named with units
(``nll_nats``, ``bits_per_dim``, ``kl``). Families add what they can compute:

* ``log_prob(params, x, key)`` -> ``[B]`` nats: exact (flows) or an importance-sampled estimate (VAE);
* ``bound(params, x, key)`` -> ``{name: [B]}``: a variational bound on ``-log p(x)`` and its terms
  (diffusion, VAE), always with ``'nll_nats'``.

GANs are two-player: :class:`TwoPlayerModel` has ``d_loss`` and ``g_loss`` with the same signature over
the joint ``params = {'g': ..., 'd': ...}`` (and ``model_state``); the engine differentiates each with
respect to its own player's part. Batches are dicts: ``{'x': [B, ...]}`` plus ``'label'`` where used;
8-bit images arrive as uint8 and each family preprocesses them itself.

The families: :class:`gen_jax.flows.NormalizingFlow`, :class:`gen_jax.diffusion.DiffusionModel`,
:class:`gen_jax.vae.VariationalAutoencoder`, :class:`gen_jax.gan.GAN`. The engine
(:func:`gen_jax.train.make_train_step`, :func:`gen_jax.train.make_two_player_step`) trains any of them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax

PyTree = Any
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
LossOutput = tuple[jax.Array, tuple[Metrics, PyTree]]


@runtime_checkable
class GenerativeModel(Protocol):
    """A single-objective generative model (flows, diffusion, VAEs); see the module docstring."""

    def init(self, key: jax.Array, batch: Batch) -> tuple[PyTree, PyTree]:
        """``(params, model_state)`` for data shaped like ``batch`` (data-dependent where the model is)."""

    def loss(self, params: PyTree, model_state: PyTree, batch: Batch, rng: jax.Array) -> LossOutput:
        """``(loss, (metrics, new_model_state))``: the objective minimised by training."""

    def sample(self, params: PyTree, key: jax.Array, n: int, **options) -> jax.Array:
        """``n`` samples in data space."""


@runtime_checkable
class TwoPlayerModel(Protocol):
    """A two-player game (GANs): ``params`` and ``model_state`` are ``{'g': ..., 'd': ...}``."""

    def init(self, key: jax.Array, batch: Batch) -> tuple[PyTree, PyTree]:
        """``({'g': g_params, 'd': d_params}, {'g': g_state, 'd': d_state})``."""

    def d_loss(self, params: PyTree, model_state: PyTree, batch: Batch, rng: jax.Array) -> LossOutput:
        """The discriminator's loss (minimised over ``params['d']``)."""

    def g_loss(self, params: PyTree, model_state: PyTree, batch: Batch, rng: jax.Array) -> LossOutput:
        """The generator's loss (minimised over ``params['g']``)."""

    def sample(self, params: PyTree, key: jax.Array, n: int, **options) -> jax.Array:
        """``n`` samples from the generator in data space."""


def split_variables(variables: dict) -> tuple[PyTree, PyTree]:
    """Flax variables -> ``(params, model_state)``: the ``'params'`` collection and every other one."""
    variables = dict(variables)
    return variables.pop("params"), variables
