"""The VAE objective: the ELBO (analytic or Monte Carlo KL, beta weighting) and the IWAE bound.

The seed's objective, maximised over decoder theta and encoder phi:

    L(theta, phi; x) = E_{q_phi(z|x)}[log p_theta(x|z)] - KL(q_phi(z|x) || p(z)),   p(z) = N(0, I),

a lower bound on log p_theta(x): log p_theta(x) = L + KL(q_phi(z|x) || p_theta(z|x)) >= L.

The functions here are model-agnostic. A model enters through ``log_likelihood``, a function
``z [B, k] -> log p_theta(x|z) [B]`` with x fixed (closed over), and through the posterior
parameters ``mean, log_var`` (``[B, k]``, q_phi(z|x) = N(mean, diag(exp(log_var)))).
:class:`gen_jax.vae.VariationalAutoencoder` wires a :class:`~gen_jax.vae.models.VAE` and a likelihood
into the engine's objective (:mod:`gen_jax.model`).

Sample k of a K-sample estimate uses eps_k ~ N(0, I) drawn from ``fold_in(rng, k)``, so estimates
that share a key share their samples (e.g. a chunked and an unchunked importance-sampled estimate
are equal, and the IWAE bound with K samples uses the first K samples of any larger K).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from gen_jax.data.preprocess import dynamic_binarize, to_symmetric, to_unit
from gen_jax.ops import standard_normal_log_prob
from gen_jax.vae import distributions
from gen_jax.vae.observations import DiscretizedLogistic, Likelihood

LogLikelihoodFn = Callable[[jax.Array], jax.Array]

KL_KINDS = ("analytic", "mc")
BINARIZE_KINDS = ("dynamic", None)


class ElboTerms(NamedTuple):
    """Per-example terms of the (beta-weighted) ELBO, each ``[B]`` in nats.

    Attributes:
      elbo: L = recon - kl (beta = 1), a lower bound on log p_theta(x).
      recon: E_{q_phi(z|x)}[log p_theta(x|z)] (Monte Carlo over the drawn samples).
      kl: KL(q_phi(z|x) || p(z)), analytic or Monte Carlo.
      objective: recon - beta * kl, the beta-VAE objective (equals ``elbo`` for beta = 1).
    """

    elbo: jax.Array
    recon: jax.Array
    kl: jax.Array
    objective: jax.Array


def _check_posterior(mean: jax.Array, log_var: jax.Array) -> None:
    if mean.ndim != 2 or mean.shape != log_var.shape:
        raise ValueError(
            f"mean and log_var must both be [B, k], got {mean.shape} and {log_var.shape}.")


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


def posterior_samples(rng: jax.Array, mean: jax.Array, log_var: jax.Array,
                      indices: jax.Array) -> jax.Array:
    """Reparameterised samples z_k = mean + exp(log_var / 2) * eps_k, eps_k from ``fold_in(rng, k)``.

    Args:
      rng: PRNG key shared by all samples.
      mean, log_var: ``[B, k]`` parameters of q_phi(z|x).
      indices: ``[S]`` int sample indices k.

    Returns:
      ``[S, B, k]`` samples (differentiable in ``mean`` and ``log_var``).
    """
    _check_posterior(mean, log_var)

    def one(i):
        return distributions.sample_diag_normal(jax.random.fold_in(rng, i), mean, log_var)

    return jax.vmap(one)(indices)


def log_weight_terms(log_likelihood: LogLikelihoodFn, mean: jax.Array, log_var: jax.Array,
                     z: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """log p_theta(x|z_s), log p(z_s), log q_phi(z_s|x) for samples ``z [S, B, k]``; each ``[S, B]``.

    The importance log-weight is log w_s = log p_theta(x|z_s) + log p(z_s) - log q_phi(z_s|x).
    """
    # One sample (the usual ELBO) is one plain call: vmap over a size-1 axis gives the same values,
    # but XLA CPU then reduces the decoder's sub-pixel bias gradient with a slow reduce-window
    # (experiments/BENCHMARKS.md).
    log_px_z = log_likelihood(z[0])[None] if z.shape[0] == 1 else jax.vmap(log_likelihood)(z)
    if log_px_z.shape != z.shape[:2]:
        raise ValueError(
            f"log_likelihood must map z [B, k] to [B]; got {log_px_z.shape[1:]} for z {z.shape[1:]}.")
    log_pz = standard_normal_log_prob(z, event_ndims=1)
    log_qz = distributions.diag_normal_log_prob(z, mean[None], log_var[None])
    return log_px_z, log_pz, log_qz


def elbo(log_likelihood: LogLikelihoodFn, mean: jax.Array, log_var: jax.Array, rng: jax.Array, *,
         num_samples: int = 1, kl: str = "analytic", beta: float = 1.0) -> ElboTerms:
    """Monte Carlo ELBO L = E_q[log p_theta(x|z)] - KL(q_phi(z|x) || p(z)) per example.

    recon = 1/S sum_s log p_theta(x|z_s), z_s ~ q_phi(z|x) reparameterised;
    kl = 1/2 sum_j [exp(log_var_j) + mean_j^2 - 1 - log_var_j] ('analytic'), or
    kl = 1/S sum_s [log q_phi(z_s|x) - log p(z_s)] ('mc', same samples as recon).

    Args:
      log_likelihood: ``z [B, k] -> log p_theta(x|z) [B]`` for the fixed batch x.
      mean, log_var: ``[B, k]`` parameters of q_phi(z|x).
      rng: PRNG key for the samples.
      num_samples: S, samples per example.
      kl: 'analytic' or 'mc'.
      beta: weight of the KL in ``objective`` (beta-VAE); ``elbo`` is always the beta = 1 bound.

    Returns:
      :class:`ElboTerms`, each ``[B]``.
    """
    _check_posterior(mean, log_var)
    _check_positive("num_samples", num_samples)
    if kl not in KL_KINDS:
        raise ValueError(f"kl={kl!r}; expected one of {KL_KINDS}.")
    z = posterior_samples(rng, mean, log_var, jnp.arange(num_samples))
    log_px_z, log_pz, log_qz = log_weight_terms(log_likelihood, mean, log_var, z)
    return _elbo_from_terms(log_px_z, log_pz, log_qz, mean, log_var, kl, beta)


def _elbo_from_terms(log_px_z, log_pz, log_qz, mean, log_var, kl, beta) -> ElboTerms:
    recon = jnp.mean(log_px_z, axis=0)
    if kl == "analytic":
        kl_value = distributions.kl_diag_normal(mean, log_var)
    else:
        kl_value = jnp.mean(log_qz - log_pz, axis=0)
    return ElboTerms(elbo=recon - kl_value, recon=recon, kl=kl_value,
                     objective=recon - beta * kl_value)


def _iwae_from_terms(log_px_z, log_pz, log_qz) -> jax.Array:
    log_w = log_px_z + log_pz - log_qz  # [K, B]
    return jax.nn.logsumexp(log_w, axis=0) - math.log(log_w.shape[0])


def iwae_bound(log_likelihood: LogLikelihoodFn, mean: jax.Array, log_var: jax.Array,
               rng: jax.Array, *, num_samples: int) -> jax.Array:
    """Importance-weighted bound L_K = E[log 1/K sum_k w_k], w_k = p_theta(x|z_k) p(z_k) / q_phi(z_k|x).

    Computed as logsumexp_k(log w_k) - log K, all K samples in one vectorised pass (differentiable;
    use as a training objective). L_1 is the ELBO; L_K is non-decreasing in K and tends to
    log p_theta(x) (Burda et al. 2016).

    Returns:
      ``[B]`` bound values in nats.
    """
    _check_posterior(mean, log_var)
    _check_positive("num_samples", num_samples)
    z = posterior_samples(rng, mean, log_var, jnp.arange(num_samples))
    return _iwae_from_terms(*log_weight_terms(log_likelihood, mean, log_var, z))


def preprocess(x: jax.Array, rng: jax.Array, likelihood: Likelihood,
               binarize: str | None = "dynamic") -> jax.Array:
    """Maps a raw batch to the data space of ``likelihood``.

    Integer images (uint8 in {0..255}): with ``binarize='dynamic'`` each pixel ~ Bernoulli(u/255)
    (fresh with every ``rng``); with ``binarize=None`` they become u/255 in [0, 1], or
    2u/255 - 1 in [-1, 1] for :class:`DiscretizedLogistic`. Float inputs are returned unchanged.
    """
    if binarize not in BINARIZE_KINDS:
        raise ValueError(f"binarize={binarize!r}; expected one of {BINARIZE_KINDS}.")
    if not jnp.issubdtype(x.dtype, jnp.integer):
        return x
    if isinstance(likelihood, DiscretizedLogistic):
        if binarize is not None:
            raise ValueError("the discretised logistic likelihood models 8-bit values; "
                             "pass binarize=None.")
        return to_symmetric(x)
    return dynamic_binarize(rng, x) if binarize == "dynamic" else to_unit(x)


def decoder_log_likelihood(model: Any, params: Any, likelihood: Likelihood,
                           x: jax.Array) -> LogLikelihoodFn:
    """The closure ``z [B, k] -> log p_theta(x|z) [B]`` of a VAE for fixed data x."""

    def log_likelihood(z: jax.Array) -> jax.Array:
        return likelihood.log_prob(model.apply({"params": params}, z, method="decode"), x)

    return log_likelihood
