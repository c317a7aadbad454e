"""Compiled train steps: one factory for every single-objective family, one for two-player games.

A family supplies its objective with the one signature of :mod:`gen_jax.model`,
``loss_fn(params, model_state, batch, rng) -> (loss, (metrics, model_state))`` (e.g. ``model.loss``);
the factory returns a step that derives the step's key as ``fold_in(state.key, state.step)``,
differentiates the objective (times the state's loss scale, if it has one: float16), skips non-finite
updates (keeping the old ``model_state`` with them), updates the EMA, and is jitted once with the state donated.
With ``replicas=True`` the same step runs over a leading replica axis of the state, so K independently
seeded models train in one compiled program, by :func:`map_replicas`: ``vmap`` (every op batched over
the replicas) or ``unroll`` (the one-replica step repeated K times side by side), ``auto`` choosing.
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


def _update(state: TrainState, loss_fn: LossFn, batch: PyTree, rng: jax.Array, *,
            joint: tuple[dict, dict] | None = None, player: str | None = None
            ) -> tuple[TrainState, jax.Array, Metrics]:
    """Differentiates ``loss_fn`` with respect to ``state.params`` and applies one update.

    Single-objective: ``loss_fn(state.params, state.model_state, batch, rng)``. A player of a two-player
    game: ``loss_fn({**joint_params, player: state.params}, joint_model_state, batch, rng)``, keeping the
    player's part of the returned model state.
    """
    if player is None:
        objective = lambda p: loss_fn(p, state.model_state, batch, rng)  # noqa: E731
    else:
        params, model_state = joint
        objective = lambda p: loss_fn({**params, player: p}, model_state, batch, rng)  # noqa: E731
    scale = state.loss_scale  # float16: differentiate loss x scale, so small gradients survive; then unscale

    def differentiated(p):
        loss, aux = objective(p)
        return (loss if scale is None else scale.scale_loss(loss)), (loss, aux)

    (_, (loss, (metrics, new_state))), grads = jax.value_and_grad(differentiated, has_aux=True)(state.params)
    if scale is not None:
        grads = scale.unscale(grads)
        metrics = dict(metrics, loss_scale=scale.scale)
    grads = _guard_nonfinite(loss, grads)
    new_state = new_state if player is None else new_state[player]
    return state.apply_gradients(grads, new_state), loss, dict(metrics, grad_norm=global_norm(grads))


#: How :func:`map_replicas` puts K replicas into one program.
REPLICA_MAPS = ("auto", "vmap", "unroll")


def equations(fn: Callable, *args) -> list:
    """Every equation of ``fn(*args)``'s jaxpr, those of nested jaxprs (jit, scan, cond, checkpoint,
    custom derivatives) included; ``args`` may be arrays, tracers or ``jax.ShapeDtypeStruct`` s."""

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
                    if hasattr(inner, "eqns"):
                        yield from walk(inner)

    return list(walk(jax.make_jaxpr(fn)(*args).jaxpr))


def convolves(fn: Callable, *args) -> bool:
    """Whether ``fn(*args)`` computes a convolution (a ``conv_general_dilated`` among its
    :func:`equations`)."""
    return any(eqn.primitive.name == "conv_general_dilated" for eqn in equations(fn, *args))


def resolve_replica_map(how: str, fn: Callable, *args) -> str:
    """The way :func:`map_replicas` maps ``fn`` for ``how``: ``'vmap'`` or ``'unroll'`` as given; ``'auto'``:
    ``'unroll'`` when ``fn(*args)`` (one replica's arguments) convolves, else ``'vmap'``."""
    if how not in REPLICA_MAPS:
        raise ValueError(f"replica map {how!r} is not one of {REPLICA_MAPS}")
    return how if how != "auto" else "unroll" if convolves(fn, *args) else "vmap"


def _replica(tree: PyTree, i: int, axis: int) -> PyTree:
    return jax.tree.map(lambda a: jax.lax.index_in_dim(a, i, axis, keepdims=False), tree)


def map_replicas(fn: Callable, in_axes: tuple[int | None, ...], how: str = "auto") -> Callable:
    """``fn`` over a replica axis of its arguments, outputs stacked on a leading replica axis (like
    ``jax.vmap(fn, in_axes)``, whose results it equals).

    Args:
      fn: a function of one replica's positional arguments.
      in_axes: per positional argument, its replica axis, or ``None`` for an argument all replicas share.
      how: ``'vmap'``: one batched program, each op runs once over all K replicas (best where the ops
        are small: K toy MLPs make wider matmuls). ``'unroll'``: ``fn``'s one-replica program repeated
        K times in the one compiled program, on the one-replica kernels. XLA CPU runs a vmapped
        convolution with per-replica kernels as a grouped convolution: K seeds of the MNIST conv
        configs measured 0.62-0.68x the throughput of K separate runs vmapped, 0.98-1.17x unrolled
        (experiments/BENCHMARKS.md). Compile time grows K-fold. ``'auto'``: ``'unroll'`` when ``fn``
        convolves (:func:`resolve_replica_map`), else ``'vmap'``.

    Raises:
      ValueError: ``how`` is not one of :data:`REPLICA_MAPS`, or no argument has a replica axis.
    """
    if how not in REPLICA_MAPS:
        raise ValueError(f"replica map {how!r} is not one of {REPLICA_MAPS}")
    if all(ax is None for ax in in_axes):
        raise ValueError("map_replicas needs at least one argument with a replica axis (in_axes all None)")
    batched = jax.vmap(fn, in_axes=in_axes)
    if how == "vmap":
        return batched

    def mapped(*args):
        k = next(jax.tree.leaves(a)[0].shape[ax] for a, ax in zip(args, in_axes) if ax is not None)
        one = lambda i: [a if ax is None else _replica(a, i, ax) for a, ax in zip(args, in_axes)]  # noqa: E731
        if resolve_replica_map(how, fn, *one(0)) == "vmap":
            return batched(*args)
        outs = [fn(*one(i)) for i in range(k)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return mapped


def _compile(step: Callable, replicas: bool, batch_axis: int | None, donate: bool, replica_map: str) -> Callable:
    if replica_map not in REPLICA_MAPS:
        raise ValueError(f"replica_map={replica_map!r} is not one of {REPLICA_MAPS}")
    if replicas:
        step = map_replicas(step, (0, batch_axis), replica_map)
    elif batch_axis is not None:
        raise ValueError("batch_axis is only meaningful with replicas=True")
    return jax.jit(step, donate_argnums=(0,) if donate else ())


def make_train_step(
    loss_fn: LossFn,
    *,
    replicas: bool = False,
    batch_axis: int | None = None,
    replica_map: str = "auto",
    donate: bool = True,
) -> Callable[[TrainState, PyTree], tuple[TrainState, Metrics]]:
    """Builds the jitted train step of a single-objective model.

    Args:
      loss_fn: ``loss_fn(params, model_state, batch, rng) -> (loss, (metrics, model_state))``, e.g. a
        :class:`gen_jax.model.GenerativeModel`'s ``loss``.
      replicas: run the step over a leading replica axis of the state (K seeds at once).
      batch_axis: with ``replicas``, the replica axis of the batch (``None``: all replicas share it).
      replica_map: with ``replicas``, how the replicas share the program: ``'vmap'``, ``'unroll'`` or
        ``'auto'`` (:func:`map_replicas`).
      donate: donate the input state's buffers to the output (the caller must not reuse it).

    Returns:
      ``step(state, batch) -> (state, metrics)``, metrics holding the objective's metrics plus
      ``loss``, ``grad_norm`` (the global L2 norm of the gradients, computed without overflow: ``inf``
      only above float32's maximum, NaN for a skipped non-finite update), ``skipped`` (1 if the
      update was skipped as non-finite) and, with a loss scale (float16), ``loss_scale`` (the one used).
    """

    def step(state: TrainState, batch: PyTree) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(state.key, state.step)
        new_state, loss, metrics = _update(state, loss_fn, batch, rng)
        skipped = 1 - new_state.opt_state.last_finite.astype(jnp.int32)
        return new_state, dict(metrics, loss=loss, skipped=skipped)

    return _compile(step, replicas, batch_axis, donate, replica_map)


#: The engine's own metrics of each player's update, named ``d_...`` and ``g_...`` in a two-player step.
_PER_PLAYER = ("grad_norm", "loss_scale")


def make_two_player_step(
    d_loss_fn: LossFn,
    g_loss_fn: LossFn,
    *,
    n_critic: int = 1,
    replicas: bool = False,
    batch_axis: int | None = None,
    replica_map: str = "auto",
    donate: bool = True,
) -> Callable[[TwoPlayerState, PyTree], tuple[TwoPlayerState, Metrics]]:
    """Builds the jitted step of a two-player game (GAN): ``n_critic`` D updates, then one G update.

    Args:
      d_loss_fn, g_loss_fn: ``(params, model_state, batch, rng) -> (loss, (metrics, model_state))`` over
        the joint ``{'g': ..., 'd': ...}`` trees (a :class:`gen_jax.model.TwoPlayerModel`'s ``d_loss`` and
        ``g_loss``); each is minimised over its own player's parameters, whose part of the returned model
        state it keeps.
      n_critic: discriminator updates per generator update, each with a fresh key, on the same batch;
        unrolled in the one compiled program (compile time grows with n_critic).
      replicas, batch_axis, replica_map, donate: as in :func:`make_train_step`.
    """
    if n_critic < 1:
        raise ValueError(f"n_critic must be >= 1, got {n_critic!r}")

    def step(state: TwoPlayerState, batch: PyTree) -> tuple[TwoPlayerState, Metrics]:
        rng = jax.random.fold_in(state.g.key, state.g.step)
        d_rng, g_rng = jax.random.split(rng)
        g, d = state.g, state.d
        # Unrolled, not a lax.scan: inside a scan XLA CPU compiled the weight gradient of D's strided
        # convolution into a far slower kernel (experiments/BENCHMARKS.md).
        for i in range(n_critic):
            joint = ({"g": g.params, "d": d.params}, {"g": g.model_state, "d": d.model_state})
            d, d_loss, d_metrics = _update(d, d_loss_fn, batch, jax.random.fold_in(d_rng, i), joint=joint,
                                           player="d")
        joint = ({"g": g.params, "d": d.params}, {"g": g.model_state, "d": d.model_state})
        g, g_loss, g_metrics = _update(g, g_loss_fn, batch, g_rng, joint=joint, player="g")
        metrics = {**{f"d_{k}" if not k.startswith("d_") else k: v for k, v in d_metrics.items()},
                   "d_loss": d_loss, **{k: v for k, v in g_metrics.items() if k not in _PER_PLAYER},
                   "g_loss": g_loss, **{f"g_{k}": g_metrics[k] for k in _PER_PLAYER if k in g_metrics},
                   "skipped": 2 - g.opt_state.last_finite.astype(jnp.int32)
                   - d.opt_state.last_finite.astype(jnp.int32)}
        return TwoPlayerState(g=g, d=d), metrics

    return _compile(step, replicas, batch_axis, donate, replica_map)
