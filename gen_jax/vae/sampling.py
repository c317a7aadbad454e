"""Generation and latent-space views of a trained VAE: prior samples, reconstructions,
interpolations and traversals. All return arrays in the likelihood's data space (Bernoulli: means
in [0, 1]; Gaussian: means; discretised logistic: locations in [-1, 1]); plotting is the caller's.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from gen_jax.vae.distributions import sample_diag_normal
from gen_jax.vae.observations import Likelihood, get_likelihood


def _decode(model: Any, params: Any, z: jax.Array) -> jax.Array:
    return model.apply({"params": params}, z, method="decode")


def decode_mean(model: Any, params: Any, z: jax.Array,
                likelihood: str | Likelihood = "bernoulli") -> jax.Array:
    """Mean of p_theta(x|z) for latents ``z [N, k]``; returns ``[N, *event]``."""
    return get_likelihood(likelihood).mean(_decode(model, params, z))


def sample_prior(model: Any, params: Any, rng: jax.Array, n: int, *,
                 likelihood: str | Likelihood = "bernoulli", mean: bool = True) -> jax.Array:
    """Ancestral samples: z ~ p(z) = N(0, I), then the mean of (``mean=True``) or a sample from
    p_theta(x|z). Returns ``[n, *event]``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}.")
    lik = get_likelihood(likelihood)
    z_rng, x_rng = jax.random.split(rng)
    z = jax.random.normal(z_rng, (n, model.latent_dim))
    params_x = _decode(model, params, z)
    return lik.mean(params_x) if mean else lik.sample(x_rng, params_x)


def reconstruct(model: Any, params: Any, x: jax.Array, *,
                likelihood: str | Likelihood = "bernoulli",
                rng: jax.Array | None = None) -> jax.Array:
    """Reconstruction: the mean of p_theta(x|z) at z = the posterior mean of q_phi(z|x), or at a
    sample z ~ q_phi(z|x) when ``rng`` is given. ``x [N, *event] -> [N, *event]``."""
    mu, log_var = model.apply({"params": params}, x, method="encode")
    z = mu if rng is None else sample_diag_normal(rng, mu, log_var)
    return decode_mean(model, params, z, likelihood)


def interpolate(model: Any, params: Any, x_a: jax.Array, x_b: jax.Array, num_steps: int, *,
                likelihood: str | Likelihood = "bernoulli") -> jax.Array:
    """Decoded linear interpolation between the posterior means of x_a and x_b.

    z_t = (1 - t) mu_phi(x_a) + t mu_phi(x_b), t in linspace(0, 1, num_steps).

    Args:
      x_a, x_b: ``[N, *event]`` endpoints.

    Returns:
      ``[N, num_steps, *event]``.
    """
    if x_a.shape != x_b.shape:
        raise ValueError(f"x_a and x_b must have the same shape, got {x_a.shape} and {x_b.shape}.")
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps!r}.")
    mu_a, _ = model.apply({"params": params}, x_a, method="encode")
    mu_b, _ = model.apply({"params": params}, x_b, method="encode")
    t = jnp.linspace(0.0, 1.0, num_steps)[None, :, None]  # [1, T, 1]
    z = (1.0 - t) * mu_a[:, None, :] + t * mu_b[:, None, :]  # [N, T, k]
    n, k = mu_a.shape
    out = decode_mean(model, params, z.reshape(n * num_steps, k), likelihood)
    return out.reshape(n, num_steps, *out.shape[1:])


def latent_traversal(model: Any, params: Any, *, dims: Sequence[int] | None = None,
                     values: jax.Array | None = None, z0: jax.Array | None = None,
                     likelihood: str | Likelihood = "bernoulli") -> jax.Array:
    """Decoded traversal grid: row i varies latent dimension dims[i] over ``values`` from z0.

    Args:
      dims: latent dimensions to traverse (default: all, up to 10).
      values: ``[V]`` values for the traversed coordinate (default: linspace(-3, 3, 9)).
      z0: ``[k]`` base latent (default: 0, the prior mode).

    Returns:
      ``[len(dims), V, *event]``.
    """
    k = model.latent_dim
    dims = tuple(range(min(k, 10))) if dims is None else tuple(dims)
    bad = [d for d in dims if not 0 <= d < k]
    if bad:
        raise ValueError(f"dims {bad} out of range for latent_dim={k}.")
    values = jnp.linspace(-3.0, 3.0, 9) if values is None else jnp.asarray(values)
    z0 = jnp.zeros((k,)) if z0 is None else jnp.asarray(z0)
    if z0.shape != (k,):
        raise ValueError(f"z0 must have shape ({k},), got {z0.shape}.")
    onehot = jax.nn.one_hot(jnp.asarray(dims), k)  # [R, k]
    z = (z0[None, None, :] * (1.0 - onehot[:, None, :])
         + values[None, :, None] * onehot[:, None, :])  # [R, V, k]
    r, v = len(dims), values.shape[0]
    out = decode_mean(model, params, z.reshape(r * v, k), likelihood)
    return out.reshape(r, v, *out.shape[1:])
