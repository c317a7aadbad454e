"""Importance-sampled estimate of the marginal log-likelihood log p_theta(x) of a VAE.

    log p_theta(x) ~= log 1/K sum_{k=1}^K p_theta(x|z_k) p(z_k) / q_phi(z_k|x),   z_k ~ q_phi(z|x),

(the IWAE bound L_K, consistent as K -> infinity; Rezende et al. 2014, Burda et al. 2016). K can be
large (5000 is the standard for MNIST): the K samples are processed in chunks inside ``lax.map`` and
only one ``[B]`` log-sum-exp per chunk is kept, so memory is O(chunk_size * B) whatever K is.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from gen_jax.vae.losses import (LogLikelihoodFn, decoder_log_likelihood, log_weight_terms,
                                posterior_samples)
from gen_jax.vae.observations import Likelihood, get_likelihood


def _chunking(num_samples: int, chunk_size: int | None) -> tuple[int, int]:
    """(samples per chunk, number of chunks), validated."""
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}.")
    chunk = num_samples if chunk_size is None else min(chunk_size, num_samples)
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}.")
    return chunk, -(-num_samples // chunk)


def num_importance_chunks(num_samples: int, chunk_size: int | None = 500) -> int:
    """How many chunks :func:`importance_sampled_log_likelihood` splits the K samples into."""
    return _chunking(num_samples, chunk_size)[1]


def importance_chunk_logsumexp(log_likelihood: LogLikelihoodFn, mean: jax.Array, log_var: jax.Array,
                               rng: jax.Array, chunk_index: int | jax.Array, *, num_samples: int = 5000,
                               chunk_size: int | None = 500,
                               rows: tuple[int | jax.Array, int] | None = None) -> jax.Array:
    """``log sum_k w_k`` over the samples k of chunk ``chunk_index``: one term of
    :func:`importance_sampled_log_likelihood`, which is ``logsumexp`` over the chunks of these minus
    ``log K``.

    Computing the chunks (and row blocks) in separate calls gives the same estimate, up to float
    summation order: a long evaluation can then be split into short device calls (progress,
    interruption) without changing its random draws.

    Args:
      log_likelihood: ``z [n, k] -> log p_theta(x|z) [n]`` for the ``n`` rows of x being evaluated.
      mean, log_var: ``[B, k]`` parameters of q_phi(z|x) for the whole batch.
      rng, num_samples, chunk_size: as in :func:`importance_sampled_log_likelihood`.
      rows: ``(start, n)``: evaluate rows ``start:start + n`` only (``start`` may be traced, ``n``
        static). The samples are drawn for the whole batch and then sliced, so each row gets the
        same z_k as in the whole-batch estimate.

    Returns:
      ``[n]`` (``[B]`` without ``rows``) log-sum-exps of the chunk's importance weights.
    """
    chunk, _ = _chunking(num_samples, chunk_size)
    idx = chunk_index * chunk + jnp.arange(chunk)  # [chunk]
    z = posterior_samples(rng, mean, log_var, idx)  # [chunk, B, k]
    if rows is not None:
        start, n = rows
        z = jax.lax.dynamic_slice_in_dim(z, start, n, axis=1)
        mean = jax.lax.dynamic_slice_in_dim(mean, start, n, axis=0)
        log_var = jax.lax.dynamic_slice_in_dim(log_var, start, n, axis=0)
    log_px_z, log_pz, log_qz = log_weight_terms(log_likelihood, mean, log_var, z)
    log_w = log_px_z + log_pz - log_qz  # [chunk, n]
    log_w = jnp.where((idx < num_samples)[:, None], log_w, -jnp.inf)
    return jax.nn.logsumexp(log_w, axis=0)


def combine_importance_chunks(per_chunk: jax.Array, num_samples: int) -> jax.Array:
    """``[num_chunks, ...]`` chunk log-sum-exps -> log p_theta(x) estimates ``[...]``."""
    return jax.nn.logsumexp(per_chunk, axis=0) - math.log(num_samples)


def importance_sampled_log_likelihood(log_likelihood: LogLikelihoodFn, mean: jax.Array,
                                      log_var: jax.Array, rng: jax.Array, *,
                                      num_samples: int = 5000,
                                      chunk_size: int | None = 500) -> jax.Array:
    """Importance-sampled log p_theta(x) with proposal q_phi(z|x), chunked over the K samples.

    Sample k uses eps_k from ``fold_in(rng, k)``, so the result does not depend on ``chunk_size``
    (up to float summation order) and equals :func:`gen_jax.vae.iwae_bound` with the same key.
    :func:`importance_chunk_logsumexp` computes one chunk, to split the work into separate calls.

    Args:
      log_likelihood: ``z [B, k] -> log p_theta(x|z) [B]`` for the fixed batch x.
      mean, log_var: ``[B, k]`` parameters of the proposal q_phi(z|x).
      rng: PRNG key.
      num_samples: K.
      chunk_size: samples evaluated at once (``None``: all K in one chunk). K need not be a multiple;
        the padding samples of the last chunk are masked out.

    Returns:
      ``[B]`` estimates of log p_theta(x) in nats (stop-gradient is not applied).
    """
    _, num_chunks = _chunking(num_samples, chunk_size)
    per_chunk = jax.lax.map(
        lambda c: importance_chunk_logsumexp(log_likelihood, mean, log_var, rng, c, num_samples=num_samples,
                                             chunk_size=chunk_size),
        jnp.arange(num_chunks))  # [num_chunks, B]
    return combine_importance_chunks(per_chunk, num_samples)


def vae_log_likelihood(model: Any, params: Any, x: jax.Array, rng: jax.Array, *,
                       likelihood: str | Likelihood = "bernoulli", num_samples: int = 5000,
                       chunk_size: int | None = 500) -> jax.Array:
    """:func:`importance_sampled_log_likelihood` for a :class:`~gen_jax.vae.models.VAE`.

    Args:
      model: the VAE module; ``params`` its ``'params'`` collection.
      x: ``[B, ...]`` data already in the likelihood's data space (see
        :func:`gen_jax.vae.preprocess`; e.g. a binarised test batch).
      rng, num_samples, chunk_size: as in :func:`importance_sampled_log_likelihood`.

    Returns:
      ``[B]`` estimates of log p_theta(x) in nats.
    """
    lik = get_likelihood(likelihood)
    mean, log_var = model.apply({"params": params}, x, method="encode")
    return importance_sampled_log_likelihood(
        decoder_log_likelihood(model, params, lik, x), mean, log_var, rng,
        num_samples=num_samples, chunk_size=chunk_size)
