"""A VAE as a :class:`gen_jax.model.GenerativeModel`: the ELBO (or the IWAE bound) as the loss, ancestral
sampling, and the importance-sampled ``log p(x)``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from gen_jax.model import split_variables
from gen_jax.vae.likelihood import vae_log_likelihood
from gen_jax.vae.losses import (BINARIZE_KINDS, KL_KINDS, _check_positive, _elbo_from_terms, _iwae_from_terms,
                                decoder_log_likelihood, log_weight_terms, posterior_samples, preprocess)
from gen_jax.vae.models import VAE
from gen_jax.vae.observations import DiscretizedLogistic, Likelihood, get_likelihood
from gen_jax.vae.sampling import sample_prior

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class VariationalAutoencoder:
    """Encoder q_phi(z|x), decoder p_theta(x|z), prior N(0, I), trained on the ELBO or the IWAE bound.

    With ``iwae_k == 1`` the loss is -1/B sum_b [E_q log p_theta(x_b|z) - beta KL(q_phi(z|x_b)||p(z))]
    (one reparameterised sample). With ``iwae_k = K > 1`` it is the negative IWAE bound -L_K
    (``beta`` must then be 1).

    Attributes:
      vae: a :class:`~gen_jax.vae.models.VAE` whose decoder emits ``likelihood.num_params`` parameters per
        data dimension.
      likelihood: 'bernoulli', 'gaussian', 'gaussian_fixed', 'logistic' or a likelihood object.
      kl: 'analytic' or 'mc' (the KL term of the ELBO and of the reported ``kl``).
      beta: KL weight (beta-VAE), > 0.
      iwae_k: importance samples K per example.
      binarize: 'dynamic' or None, applied to integer (uint8) image batches (see :func:`preprocess`).

    Loss metrics (batch means): ``elbo_nats`` (L), ``nll_bound_nats`` (-L), ``recon_nats`` (-E_q log
    p_theta(x|z)), ``kl`` (nats; -elbo_nats = recon_nats + kl), ``iwae_nats`` (L_K, when K > 1),
    ``bits_per_dim`` (-L/(D ln 2), for the discretised logistic).
    """

    vae: VAE
    likelihood: str | Likelihood = "bernoulli"
    kl: str = "analytic"
    beta: float = 1.0
    iwae_k: int = 1
    binarize: str | None = "dynamic"

    def __post_init__(self):
        lik = get_likelihood(self.likelihood)
        if self.kl not in KL_KINDS:
            raise ValueError(f"kl={self.kl!r}; expected one of {KL_KINDS}.")
        if self.binarize not in BINARIZE_KINDS:
            raise ValueError(f"binarize={self.binarize!r}; expected one of {BINARIZE_KINDS}.")
        _check_positive("iwae_k", self.iwae_k)
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta!r}.")
        if self.iwae_k > 1 and self.beta != 1.0:
            raise ValueError(f"the IWAE objective (iwae_k={self.iwae_k}) has no beta; got beta={self.beta!r}.")
        if isinstance(lik, DiscretizedLogistic) and self.binarize is not None:
            raise ValueError("likelihood='logistic' models 8-bit values; pass binarize=None.")
        object.__setattr__(self, "likelihood", lik)

    def init(self, key: Array, batch: dict) -> tuple[Any, dict]:
        """Parameters of both networks (shapes from one example of ``batch['x']``)."""
        x = jnp.zeros((1, *batch["x"].shape[1:]), jnp.float32)
        return split_variables(jax.jit(self.vae.init)(key, x))

    def preprocess(self, x: Array, rng: Array) -> Array:
        """A raw batch in the likelihood's data space (:func:`gen_jax.vae.preprocess`)."""
        return preprocess(x, rng, self.likelihood, self.binarize)

    def loss(self, params: Any, model_state: dict, batch: dict, rng: Array) -> tuple[Array, tuple[dict, dict]]:
        data_rng, z_rng = jax.random.split(rng)
        x = self.preprocess(batch["x"], data_rng)
        mean, log_var = self.vae.apply({"params": params}, x, method="encode")
        log_likelihood = decoder_log_likelihood(self.vae, params, self.likelihood, x)
        z = posterior_samples(z_rng, mean, log_var, jnp.arange(self.iwae_k))
        terms = log_weight_terms(log_likelihood, mean, log_var, z)
        e = _elbo_from_terms(*terms, mean, log_var, self.kl, self.beta)
        metrics = {"elbo_nats": jnp.mean(e.elbo), "nll_bound_nats": -jnp.mean(e.elbo),
                   "recon_nats": -jnp.mean(e.recon), "kl": jnp.mean(e.kl)}
        if self.iwae_k > 1:
            bound = _iwae_from_terms(*terms)
            metrics["iwae_nats"] = jnp.mean(bound)
            loss = -jnp.mean(bound)
        else:
            loss = -jnp.mean(e.objective)
        if isinstance(self.likelihood, DiscretizedLogistic):
            metrics["bits_per_dim"] = metrics["nll_bound_nats"] / (math.prod(x.shape[1:]) * math.log(2))
        return loss, (metrics, model_state)

    def sample(self, params: Any, key: Array, n: int, mean: bool = True) -> Array:
        """z ~ N(0, I), then the mean of (``mean=True``) or a sample from p_theta(x|z); images (3-D
        events) are mapped to [0, 1] (the discretised logistic's [-1, 1] rescaled)."""
        x = sample_prior(self.vae, params, key, n, likelihood=self.likelihood, mean=mean)
        return self.to_unit(x) if x.ndim == 4 else x

    def to_unit(self, x: Array) -> Array:
        """Likelihood data space -> [0, 1] for pictures."""
        if isinstance(self.likelihood, DiscretizedLogistic):
            x = (x + 1.0) * 0.5
        return jnp.clip(x, 0.0, 1.0)

    def log_prob(self, params: Any, x: Array, key: Array, num_samples: int = 5000,
                 chunk_size: int | None = 500) -> Array:
        """Importance-sampled ``log p_theta(x)`` ``[B]`` (nats) of ``x`` in the likelihood's data space
        (:func:`gen_jax.vae.vae_log_likelihood`)."""
        return vae_log_likelihood(self.vae, params, x, key, likelihood=self.likelihood,
                                  num_samples=num_samples, chunk_size=chunk_size)
