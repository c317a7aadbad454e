"""Variational autoencoders (the seed's VAE).

Encoder q_phi(z|x) = N(mean, diag(exp(log_var))), decoder p_theta(x|z), prior p(z) = N(0, I); train
by maximising the ELBO

    L(theta, phi; x) = E_{q_phi(z|x)}[log p_theta(x|z)] - KL(q_phi(z|x) || p(z)) <= log p_theta(x),

or the tighter importance-weighted bound L_K; evaluate log p_theta(x) by importance sampling.
"""

from gen_jax.vae.distributions import (diag_normal_log_prob, kl_diag_normal, kl_monte_carlo,
                                       sample_diag_normal)
from gen_jax.vae.likelihood import (combine_importance_chunks, importance_chunk_logsumexp,
                                   importance_sampled_log_likelihood, num_importance_chunks, vae_log_likelihood)
from gen_jax.vae.losses import (ElboTerms, decoder_log_likelihood, elbo, iwae_bound,
                                log_weight_terms, posterior_samples, preprocess)
from gen_jax.vae.models import (VAE, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, conv_vae,
                                mlp_vae)
from gen_jax.ops import standard_normal_log_prob
from gen_jax.vae.protocol import VariationalAutoencoder
from gen_jax.vae.observations import (LIKELIHOODS, Bernoulli, DiscretizedLogistic, Gaussian,
                                      Likelihood, get_likelihood)
from gen_jax.vae.sampling import (decode_mean, interpolate, latent_traversal, reconstruct,
                                  sample_prior)

__all__ = [
    "LIKELIHOODS",
    "VAE",
    "VariationalAutoencoder",
    "Bernoulli",
    "ConvDecoder",
    "ConvEncoder",
    "DiscretizedLogistic",
    "ElboTerms",
    "Gaussian",
    "Likelihood",
    "MLPDecoder",
    "MLPEncoder",
    "combine_importance_chunks",
    "conv_vae",
    "decode_mean",
    "decoder_log_likelihood",
    "diag_normal_log_prob",
    "elbo",
    "get_likelihood",
    "importance_chunk_logsumexp",
    "importance_sampled_log_likelihood",
    "interpolate",
    "iwae_bound",
    "kl_diag_normal",
    "kl_monte_carlo",
    "latent_traversal",
    "log_weight_terms",
    "mlp_vae",
    "num_importance_chunks",
    "posterior_samples",
    "preprocess",
    "reconstruct",
    "sample_diag_normal",
    "sample_prior",
    "standard_normal_log_prob",
    "vae_log_likelihood",
]
