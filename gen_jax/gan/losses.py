"""GAN objectives: the seed's value function, the usual discriminator/generator losses, penalties.

The seed's game (Goodfellow et al., 2014)::

    min_G max_D V(D, G) = E_{x~p_data}[log D(x)] + E_{z~p_z}[log(1 - D(G(z)))]

Throughout, the discriminator returns a *logit* ``l`` and ``D(x) = sigmoid(l)``, so that
``log D = log_sigmoid(l)`` and ``log(1 - D) = log_sigmoid(-l)`` are computed stably. Every loss is
written per example (shape ``[B]``) and reduced once with a mean. The losses are *minimised* by the
player that owns them:

=================  =====================================  ====================================
kind               discriminator loss (per example)       generator loss (per fake example)
=================  =====================================  ====================================
minimax            -log D(x) - log(1 - D(G(z)))   (= -V)  log(1 - D(G(z)))   (the seed, saturating)
non_saturating     -log D(x) - log(1 - D(G(z)))   (= -V)  -log D(G(z))
hinge              relu(1 - l_real) + relu(1 + l_fake)    -l_fake
wasserstein        l_fake - l_real  (critic; add GP)      -l_fake
least_squares      (l_real - 1)^2 / 2 + l_fake^2 / 2      (l_fake - 1)^2 / 2
=================  =====================================  ====================================

Penalties (per example, to be weighted and averaged by the caller):

* gradient penalty (WGAN-GP, Gulrajani et al. 2017): ``(||grad_x D(x_hat)||_2 - 1)^2`` with
  ``x_hat = eps x_real + (1 - eps) x_fake``, ``eps ~ U[0, 1]`` drawn per example;
* R1 (Mescheder et al. 2018): ``||grad_x D(x_real)||_2^2`` (the loss adds ``gamma / 2`` times it).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

LOSS_KINDS = ("minimax", "non_saturating", "hinge", "wasserstein", "least_squares")

CriticFn = Callable[[jax.Array], jax.Array]


def _check_kind(kind: str) -> None:
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss kind must be one of {LOSS_KINDS}, got {kind!r}")


def _check_logits(name: str, logits: jax.Array) -> None:
    if jnp.ndim(logits) != 1:
        raise ValueError(f"{name} must be a vector of per-example logits [B], got shape {jnp.shape(logits)}")


def log_d(logits: jax.Array) -> jax.Array:
    """``log D(x) = log sigmoid(l)`` per example, stable for large ``|l|``."""
    return jax.nn.log_sigmoid(logits)


def log_one_minus_d(logits: jax.Array) -> jax.Array:
    """``log(1 - D(x)) = log sigmoid(-l)`` per example, stable for large ``|l|``."""
    return jax.nn.log_sigmoid(-logits)


def value_function(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """Monte Carlo estimate of the seed's value function from discriminator logits.

    ``V(D, G) = E_{x~p_data}[log D(x)] + E_{z~p_z}[log(1 - D(G(z)))]``, with
    ``D(x) = sigmoid(l(x))``; each expectation is the mean over its batch.

    Args:
      real_logits: ``[B]`` logits of real examples ``x ~ p_data``.
      fake_logits: ``[B']`` logits of generated examples ``G(z), z ~ p_z``.

    Returns:
      Scalar ``V`` in nats; at most 0, and ``-log 4`` when ``D = 1/2`` everywhere.
    """
    _check_logits("real_logits", real_logits)
    _check_logits("fake_logits", fake_logits)
    return jnp.mean(log_d(real_logits)) + jnp.mean(log_one_minus_d(fake_logits))


def discriminator_loss_terms(
    real_logits: jax.Array, fake_logits: jax.Array, kind: str = "non_saturating"
) -> tuple[jax.Array, jax.Array]:
    """Per-example discriminator losses on real and on fake examples (see the module table).

    Returns:
      ``(real_terms [B], fake_terms [B'])``; the discriminator minimises
      ``mean(real_terms) + mean(fake_terms)``.
    """
    _check_kind(kind)
    _check_logits("real_logits", real_logits)
    _check_logits("fake_logits", fake_logits)
    if kind in ("minimax", "non_saturating"):
        # D maximises V: minimise -log D(x) - log(1 - D(G(z))).
        return -log_d(real_logits), -log_one_minus_d(fake_logits)
    if kind == "hinge":
        return jax.nn.relu(1.0 - real_logits), jax.nn.relu(1.0 + fake_logits)
    if kind == "wasserstein":
        return -real_logits, fake_logits
    # least_squares (Mao et al. 2017, a=0, b=c=1).
    return 0.5 * jnp.square(real_logits - 1.0), 0.5 * jnp.square(fake_logits)


def generator_loss_terms(fake_logits: jax.Array, kind: str = "non_saturating") -> jax.Array:
    """Per-example generator losses on fake examples (see the module table); shape ``[B]``."""
    _check_kind(kind)
    _check_logits("fake_logits", fake_logits)
    if kind == "minimax":
        # The seed literally: G minimises E log(1 - D(G(z))). Saturates when D(G(z)) -> 0.
        return log_one_minus_d(fake_logits)
    if kind == "non_saturating":
        # G maximises log D(G(z)).
        return -log_d(fake_logits)
    if kind in ("hinge", "wasserstein"):
        return -fake_logits
    return 0.5 * jnp.square(fake_logits - 1.0)


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array, kind: str = "non_saturating") -> jax.Array:
    """Scalar discriminator loss ``mean(real_terms) + mean(fake_terms)``; for the minimax and
    non-saturating kinds it equals ``-V(D, G)``."""
    real_terms, fake_terms = discriminator_loss_terms(real_logits, fake_logits, kind)
    return jnp.mean(real_terms) + jnp.mean(fake_terms)


def generator_loss(fake_logits: jax.Array, kind: str = "non_saturating") -> jax.Array:
    """Scalar generator loss ``mean(generator_loss_terms(fake_logits, kind))``."""
    return jnp.mean(generator_loss_terms(fake_logits, kind))


def _input_gradients(critic_fn: CriticFn, x: jax.Array) -> jax.Array:
    """``grad_x l(x_i)`` for every example: the gradient of ``sum_i l(x_i)`` w.r.t. the batch.

    Exact per example as long as the critic treats the examples of a batch independently (no
    batch normalisation in D), which holds for every discriminator in :mod:`gen_jax.gan.models`.
    """
    logits, vjp = jax.vjp(critic_fn, x)
    if logits.shape != x.shape[:1]:
        raise ValueError(f"critic_fn must map a batch [B, ...] to logits [B], got {logits.shape} "
                         f"for inputs of shape {x.shape}")
    (grads,) = vjp(jnp.ones_like(logits))
    return grads


def _per_example_sq_norm(g: jax.Array) -> jax.Array:
    return jnp.sum(jnp.square(g).reshape(g.shape[0], -1), axis=1)  # [B]


def gradient_penalty(critic_fn: CriticFn, real: jax.Array, fake: jax.Array, key: jax.Array) -> jax.Array:
    """WGAN-GP penalty per example: ``(||grad_x D(x_hat)||_2 - 1)^2``.

    ``x_hat = eps * x_real + (1 - eps) * x_fake`` with ``eps ~ U[0, 1]`` drawn independently for each
    example (one scalar per example, shared over its coordinates).

    Args:
      critic_fn: maps a batch ``[B, ...]`` to logits ``[B]`` (close over params and labels).
      real, fake: ``[B, ...]`` real and generated examples of the same shape.
      key: PRNG key for ``eps``.

    Returns:
      ``[B]`` penalties; the discriminator loss adds ``lambda * mean``.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {real.shape} and {fake.shape}")
    eps = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), dtype=real.dtype)
    x_hat = eps * real + (1.0 - eps) * fake
    grads = _input_gradients(critic_fn, x_hat)
    # sqrt of a sum of squares has an infinite derivative at 0; guard it (the penalty there is 1).
    sq = _per_example_sq_norm(grads)
    norm = jnp.sqrt(jnp.where(sq > 0, sq, 1.0))
    norm = jnp.where(sq > 0, norm, 0.0)
    return jnp.square(norm - 1.0)


def r1_penalty(critic_fn: CriticFn, real: jax.Array) -> jax.Array:
    """R1 penalty per example: ``||grad_x D(x)||_2^2`` at real data ``x`` (``D`` as a logit).

    Returns:
      ``[B]`` penalties; the discriminator loss adds ``gamma / 2 * mean``.
    """
    return _per_example_sq_norm(_input_gradients(critic_fn, real))
