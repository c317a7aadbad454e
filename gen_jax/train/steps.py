"""Compiled train steps: one factory for every single-objective family, one for two-player games.

A family supplies only its objective ``loss_fn(params, batch, rng) -> (loss, metrics)``; the factory
returns a step that derives the step's key as ``fold_in(state.key, state.step)``, differentiates the
objective, skips non-finite updates, updates the EMA, and is jitted once with the state donated.
With ``replicas=True`` the same step is ``vmap``-ed over a leading replica axis of the state, so K
independently seeded models train in one compiled program.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from gen_jax.train.state import TrainState, TwoPlayerState

PyTree = Any
Metrics = dict[str, jax.Array]
LossFn = Callable[..., tuple[jax.Array, Any]]


def _guard_nonfinite(loss: jax.Array, grads: PyTree) -> PyTree:
    """Makes the gradients non-finite whenever the loss is, so ``apply_if_finite`` skips the update."""
    ok = jnp.isfinite(loss)
    return jax.tree.map(lambda g: jnp.where(ok, g, jnp.nan), grads)


def global_norm(tree: PyTree) -> jax.Array:
    """The L2 norm of all leaves, ``sqrt(sum x^2)``, without overflow: where the plain sum of squares
    exceeds float32 (a norm above ~1.8e19) it is recomputed as ``m * sqrt(sum (x / m)^2)`` with ``m`` the
    largest ``|x|``, so the result is ``inf`` only for a norm above float32's maximum (~3.4e38), and NaN
    where any leaf is NaN."""
    plain = optax.global_norm(tree)

    def rescaled():
        m = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in jax.tree.leaves(tree)]))
        safe = jnp.where((m > 0) & jnp.isfinite(m), m, 1.0)
        scaled = safe * jnp.sqrt(sum(jnp.sum(jnp.square(x / safe)) for x in jax.tree.leaves(tree)))
        return jnp.where(jnp.isfinite(m), scaled, m).astype(plain.dtype)

    return jax.lax.cond(jnp.isinf(plain), rescaled, lambda: plain)


def _objective_update(state: TrainState, loss_fn: LossFn, *args) -> tuple[TrainState, jax.Array, Metrics]:
    """Differentiates ``loss_fn(state.params, *args[, batch_stats])`` and applies one update."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if state.batch_stats is None:
        (loss, metrics), grads = grad_fn(state.params, *args)
        new_stats = None
    else:
        (loss, (metrics, new_stats)), grads = grad_fn(state.params, *args, state.batch_stats)
    grads = _guard_nonfinite(loss, grads)
    new_state = state.apply_gradients(grads, new_stats)
    return new_state, loss, dict(metrics, grad_norm=global_norm(grads))


def _compile(step: Callable, replicas: bool, batch_axis: int | None, donate: bool) -> Callable:
    if replicas:
        step = jax.vmap(step, in_axes=(0, batch_axis))
    elif batch_axis is not None:
        raise ValueError("batch_axis is only meaningful with replicas=True")
    return jax.jit(step, donate_argnums=(0,) if donate else ())


def make_train_step(
    loss_fn: LossFn,
    *,
    replicas: bool = False,
    batch_axis: int | None = None,
    donate: bool = True,
) -> Callable[[TrainState, PyTree], tuple[TrainState, Metrics]]:
    """Builds the jitted train step of a single-objective model.

    Args:
      loss_fn: ``loss_fn(params, batch, rng) -> (loss, metrics)``; if the state carries
        ``batch_stats``, ``loss_fn(params, batch, rng, batch_stats) -> (loss, (metrics, new_stats))``.
      replicas: vmap the step over a leading replica axis of the state (K seeds at once).
      batch_axis: with ``replicas``, the replica axis of the batch (``None``: all replicas share it).
      donate: donate the input state's buffers to the output (the caller must not reuse it).

    Returns:
      ``step(state, batch) -> (state, metrics)``, metrics holding the objective's metrics plus
      ``loss``, ``grad_norm`` (the global L2 norm of the gradients, computed without overflow: ``inf``
      only above float32's maximum, NaN for a skipped non-finite update) and ``skipped`` (1 if the
      update was skipped as non-finite).
    """

    def step(state: TrainState, batch: PyTree) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(state.key, state.step)
        new_state, loss, metrics = _objective_update(state, loss_fn, batch, rng)
        skipped = 1 - new_state.opt_state.last_finite.astype(jnp.int32)
        return new_state, dict(metrics, loss=loss, skipped=skipped)

    return _compile(step, replicas, batch_axis, donate)


def make_two_player_step(
    d_loss_fn: LossFn,
    g_loss_fn: LossFn,
    *,
    n_critic: int = 1,
    replicas: bool = False,
    batch_axis: int | None = None,
    donate: bool = True,
) -> Callable[[TwoPlayerState, PyTree], tuple[TwoPlayerState, Metrics]]:
    """Builds the jitted step of a two-player game (GAN): ``n_critic`` D updates, then one G update.

    Args:
      d_loss_fn: ``d_loss_fn(d_params, g_params, batch, rng) -> (loss, metrics)``, or with
        ``d_batch_stats`` appended ``-> (loss, (metrics, new_d_batch_stats))`` when D has batch stats.
      g_loss_fn: ``g_loss_fn(g_params, d_params, batch, rng) -> (loss, metrics)``, with
        ``d_batch_stats`` appended when D has batch stats (read-only for G).
      n_critic: discriminator updates per generator update, each with a fresh key, on the same batch;
        unrolled in the one compiled program (compile time grows with n_critic).
      replicas, batch_axis, donate: as in :func:`make_train_step`.
    """
    if n_critic < 1:
        raise ValueError(f"n_critic must be >= 1, got {n_critic!r}")

    def step(state: TwoPlayerState, batch: PyTree) -> tuple[TwoPlayerState, Metrics]:
        rng = jax.random.fold_in(state.g.key, state.g.step)
        d_rng, g_rng = jax.random.split(rng)

        def d_update(d: TrainState, i: jax.Array):
            d, loss, metrics = _objective_update(d, d_loss_fn, state.g.params, batch,
                                                 jax.random.fold_in(d_rng, i))
            return d, dict(metrics, d_loss=loss)

        # Unrolled, not a lax.scan: from inside the scan (even of length 1) XLA CPU compiled the weight
        # gradient of D's strided convolution into a far slower kernel (4.3 s of a 5.5 s DCGAN step at
        # batch 128; 0.54 s for the whole step unrolled). See experiments/BENCHMARKS.md.
        d = state.d
        for i in range(n_critic):
            d, d_metrics = d_update(d, i)
        g_args = (d.params, batch, g_rng) + (() if d.batch_stats is None else (d.batch_stats,))
        grad_fn = jax.value_and_grad(g_loss_fn, has_aux=True)
        (g_loss, g_metrics), grads = grad_fn(state.g.params, *g_args)
        grads = _guard_nonfinite(g_loss, grads)
        g = state.g.apply_gradients(grads)
        metrics = {**{f"d_{k}" if not k.startswith("d_") else k: v for k, v in d_metrics.items()},
                   **g_metrics, "g_loss": g_loss, "g_grad_norm": global_norm(grads),
                   "skipped": 2 - g.opt_state.last_finite.astype(jnp.int32)
                   - d.opt_state.last_finite.astype(jnp.int32)}
        return TwoPlayerState(g=g, d=d), metrics

    return _compile(step, replicas, batch_axis, donate)
