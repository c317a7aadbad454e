"""Training state: every mutable piece of a run in one pytree.

A :class:`TrainState` holds the parameters, the optimizer state, the step counter, one typed PRNG key,
optionally an exponential moving average (EMA) of the parameters, and the model's non-trainable
``model_state`` (Flax collections other than ``'params'``, e.g. the power-iteration vectors of spectral
normalisation; ``{}`` when there are none), as :mod:`gen_jax.model` defines it. Two-player models
(GANs) hold one state per player in a :class:`TwoPlayerState`.

The optimizer is always wrapped in :func:`optax.apply_if_finite`, so an update whose gradients contain
NaN/Inf is skipped and counted (``state.nonfinite_total``; consecutive skips in
``state.nonfinite_consecutive``). A state may hold a dynamic loss scale (float16 compute,
:class:`gen_jax.precision.DynamicLossScale`), which each update adjusts.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from gen_jax.precision import DynamicLossScale

PyTree = Any

# The loop stops a run long before optax's own limit would start applying non-finite updates.
_MAX_CONSECUTIVE_NONFINITE = 2**30


def _skip_nonfinite(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``apply_if_finite(tx)``, built where it is used: the state keeps ``tx`` as given, so states
    built from one ``tx`` share a pytree structure (they stack, restore and hit one compiled step)."""
    return optax.apply_if_finite(tx, _MAX_CONSECUTIVE_NONFINITE)


class TrainState(flax.struct.PyTreeNode):
    """All mutable training state of one model.

    Attributes:
      step: int32 scalar, number of optimizer updates attempted so far.
      params: trainable parameters.
      opt_state: state of ``optax.apply_if_finite(tx)`` (an ``optax.ApplyIfFiniteState``).
      key: typed PRNG key of the run; the step derives ``fold_in(key, step)`` from it.
      ema_params: EMA of ``params`` when ``ema_decay > 0``, else ``None``.
      model_state: the model's non-trainable variables (``{}`` if it has none).
      loss_scale: the dynamic loss scale of float16 compute, else ``None``: the train step differentiates the
        scaled loss and unscales the gradients it passes to :meth:`apply_gradients`, which adjusts the scale.
      tx: the optax transformation as given (static); every update goes through
        ``apply_if_finite(tx)``.
      ema_decay: EMA decay in [0, 1) (static); 0 disables the EMA. At update t the decay used is
        ``min(ema_decay, (1 + t) / (10 + t))`` (the usual warm-up).
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    key: jax.Array
    ema_params: PyTree = None
    model_state: PyTree = flax.struct.field(default_factory=dict)
    loss_scale: DynamicLossScale | None = None
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)
    ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)

    @classmethod
    def create(
        cls,
        *,
        params: PyTree,
        tx: optax.GradientTransformation,
        key: jax.Array,
        ema_decay: float = 0.0,
        model_state: PyTree = None,
        loss_scale: DynamicLossScale | None = None,
    ) -> "TrainState":
        """Builds a fresh state; its updates go through ``optax.apply_if_finite(tx)``."""
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
        if not jax.dtypes.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
            raise TypeError("key must be a typed PRNG key from jax.random.key(seed), got "
                            f"an array of dtype {jnp.asarray(key).dtype}")
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=_skip_nonfinite(tx).init(params),
            key=key,
            ema_params=jax.tree.map(jnp.copy, params) if ema_decay > 0 else None,
            model_state={} if model_state is None else model_state,
            loss_scale=loss_scale,
            tx=tx,
            ema_decay=float(ema_decay),
        )

    def apply_gradients(self, grads: PyTree, model_state: PyTree = None) -> "TrainState":
        """One optimizer update (skipped by ``apply_if_finite`` if ``grads`` are not finite); the new
        ``model_state`` is kept only with the update (``None``: unchanged). ``grads`` are unscaled: with a
        ``loss_scale``, divided by it already (the train step does); the scale is adjusted here."""
        updates, opt_state = _skip_nonfinite(self.tx).update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        ema = self.ema_params
        if self.ema_decay > 0:
            # Warm-up: decay_t = min(decay, (1 + t) / (10 + t)), so early EMAs are not stuck at init.
            t = self.step.astype(jnp.float32)
            decay = jnp.minimum(self.ema_decay, (1.0 + t) / (10.0 + t))
            ema = optax.incremental_update(params, ema, 1.0 - decay)
        finite = opt_state.last_finite
        if model_state is None:
            model_state = self.model_state
        else:
            model_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), model_state, self.model_state)
        loss_scale = None if self.loss_scale is None else self.loss_scale.adjust(finite)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, ema_params=ema,
                            model_state=model_state, loss_scale=loss_scale)

    @property
    def eval_params(self) -> PyTree:
        """The parameters to sample/evaluate with: the EMA when there is one."""
        return self.params if self.ema_params is None else self.ema_params

    @property
    def nonfinite_total(self) -> jax.Array:
        """Number of updates skipped so far because of NaN/Inf gradients or loss, not counting those a float16
        loss scale skipped while finding its level (its ``overflows``)."""
        total = self.opt_state.total_notfinite
        return total if self.loss_scale is None else total - self.loss_scale.overflows

    @property
    def nonfinite_consecutive(self) -> jax.Array:
        """Number of consecutive skipped updates ending at the current step."""
        return self.opt_state.notfinite_count


class TwoPlayerState(flax.struct.PyTreeNode):
    """State of a two-player game (GAN): one :class:`TrainState` per player."""

    g: TrainState
    d: TrainState

    @classmethod
    def create(cls, *, params: PyTree, model_state: PyTree, g_tx: optax.GradientTransformation,
               d_tx: optax.GradientTransformation, g_key: jax.Array, d_key: jax.Array,
               ema_decay: float = 0.0, loss_scale: DynamicLossScale | None = None) -> "TwoPlayerState":
        """From a two-player model's ``init``: ``params``/``model_state`` are ``{'g': ..., 'd': ...}``;
        the generator keeps the EMA (used for sampling), each player has its own optimizer, key and loss
        scale (``loss_scale`` is where both start)."""
        return cls(g=TrainState.create(params=params["g"], tx=g_tx, key=g_key, ema_decay=ema_decay,
                                       model_state=model_state.get("g"), loss_scale=loss_scale),
                   d=TrainState.create(params=params["d"], tx=d_tx, key=d_key, model_state=model_state.get("d"),
                                       loss_scale=loss_scale))

    @property
    def params(self) -> PyTree:
        """The joint ``{'g': ..., 'd': ...}`` parameters."""
        return {"g": self.g.params, "d": self.d.params}

    @property
    def eval_params(self) -> PyTree:
        """The joint parameters to sample/evaluate with: the generator's EMA when there is one."""
        return {"g": self.g.eval_params, "d": self.d.params}

    @property
    def model_state(self) -> PyTree:
        return {"g": self.g.model_state, "d": self.d.model_state}

    @property
    def step(self) -> jax.Array:
        return self.g.step

    @property
    def nonfinite_total(self) -> jax.Array:
        return self.g.nonfinite_total + self.d.nonfinite_total

    @property
    def nonfinite_consecutive(self) -> jax.Array:
        return jnp.maximum(self.g.nonfinite_consecutive, self.d.nonfinite_consecutive)


def make_optimizer(
    *,
    optimizer: str = "adam",
    learning_rate: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    schedule: str = "constant",
    num_steps: int | None = None,
    grad_clip: float | None = None,
) -> optax.GradientTransformation:
    """An optax optimizer from explicit settings.

    Args:
      optimizer: ``'adam'``, ``'adamw'`` or ``'sgd'`` (momentum ``b1``).
      learning_rate: peak learning rate, > 0.
      warmup_steps: linear warm-up from 0 to ``learning_rate``.
      schedule: ``'constant'`` or ``'cosine'`` (decay to 0 at ``num_steps``; needs ``num_steps``).
      grad_clip: clip the global gradient norm to this value (``None`` or 0: no clipping).
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if schedule == "constant":
        lr = learning_rate
        if warmup_steps:
            lr = optax.join_schedules(
                [optax.linear_schedule(0.0, learning_rate, warmup_steps),
                 optax.constant_schedule(learning_rate)], [warmup_steps])
    elif schedule == "cosine":
        if not num_steps or num_steps <= warmup_steps:
            raise ValueError(f"schedule='cosine' needs num_steps > warmup_steps, got num_steps="
                             f"{num_steps!r}, warmup_steps={warmup_steps!r}")
        lr = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, num_steps)
    else:
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    if optimizer == "adam":
        opt = optax.adam(lr, b1=b1, b2=b2, eps=eps)
    elif optimizer == "adamw":
        opt = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = optax.sgd(lr, momentum=b1 or None)
    else:
        raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {optimizer!r}")
    if weight_decay and optimizer != "adamw":
        opt = optax.chain(optax.add_decayed_weights(weight_decay), opt)
    if grad_clip:
        if grad_clip < 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip!r}")
        opt = optax.chain(optax.clip_by_global_norm(grad_clip), opt)
    return opt
