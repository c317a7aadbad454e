"""Exact log-likelihood by the probability-flow ODE (Song et al. 2021; Chen et al. 2018 and Grathwohl et al. 2019,
the instantaneous change of variables), integrated by diffrax's adaptive solvers.

A velocity field v(z, t) whose ODE dz/dt = v carries the data (t = t0) to the prior (t = t1) changes log-densities
along its paths by d/dt log p_t(z_t) = -div v(z_t, t), so

    log p_t0(z_t0) = log p_t1(z_t1) + int_t0^t1 div v(z_t, t) dt.

The divergence is exact (D Jacobian-vector products; small D) or Hutchinson's estimate eps^T (dv/dz) eps with
Rademacher or Gaussian probes eps (unbiased; one Jacobian-vector product per probe), the probes drawn once per
solve as in FFJORD. Each model gives its field by ``probability_flow(params)`` ->
``(v(z [B, ...], t scalar) -> [B, ...], t0, t1)``: flow matching its learned velocity; diffusion models
the probability-flow ODE of their noising process, v = alpha'_t x_hat + sigma'_t eps_hat for z_t = alpha_t x +
sigma_t eps (x_hat and eps_hat from the network).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from gen_jax.ops import sum_except_batch, standard_normal_log_prob

__all__ = ["DIVERGENCES", "ode_log_likelihood", "divergence", "dequantized_bits_per_dim"]

Array = jax.Array
Velocity = Callable[[Array, Array], Array]
DIVERGENCES = ("exact", "rademacher", "gaussian")


def divergence(v: Velocity, z: Array, t: Array, kind: str = "exact", probes: Array | None = None) -> tuple[Array, Array]:
    """``(v(z, t), div_z v(z, t) [B])``: exact (one JVP per dimension) or Hutchinson's ``eps^T (dv/dz) eps``
    averaged over ``probes`` [K, B, ...]."""
    f = lambda z: v(z, t)  # noqa: E731
    if kind == "exact":
        D = math.prod(z.shape[1:])
        out = f(z)
        basis = jnp.eye(D, dtype=z.dtype).reshape((D, 1) + z.shape[1:])

        def diag(e):
            return sum_except_batch(jax.jvp(f, (z,), (jnp.broadcast_to(e, z.shape),))[1] * e)

        return out, jnp.sum(jax.lax.map(diag, basis), axis=0)
    if kind in ("rademacher", "gaussian"):
        if probes is None:
            raise ValueError("Hutchinson's estimator needs probes")
        out, jvp = jax.linearize(f, z)
        probes = jnp.asarray(probes, z.dtype)
        return out, jnp.mean(jax.lax.map(lambda e: sum_except_batch(jvp(e) * e), probes), axis=0)
    raise ValueError(f"divergence must be one of {DIVERGENCES}; got {kind!r}")


def ode_log_likelihood(flow: tuple[Velocity, float, float], x: Array, key: Array | None = None, *,
                       divergence_kind: str = "exact", num_probes: int = 1, rtol: float = 1e-5, atol: float = 1e-5,
                       prior_log_prob: Callable[[Array], Array] = standard_normal_log_prob,
                       max_steps: int = 8192) -> dict[str, Array]:
    """log p(x) [B] (nats) of a probability-flow ODE, by diffrax's Tsit5 with a PID step-size controller.

    Args:
      flow: ``(v, t0, t1)`` from a model's ``probability_flow(params)``.
      x: points at t0 [B, ...] (in the model's space).
      key: draws Hutchinson's probes (not needed for the exact divergence).
      divergence_kind: 'exact', 'rademacher' or 'gaussian'.
      num_probes: probes per example (Hutchinson).
      rtol, atol: the solver's tolerances.
      prior_log_prob: log p_t1(z) [B] (default N(0, I)).

    Returns:
      ``log_prob`` [B], ``prior_log_prob`` [B] (at z_t1), ``delta_log_prob`` [B] (the divergence integral),
      ``z1`` [B, ...] and ``num_steps`` (accepted solver steps; about 6 evaluations each).
    """
    import diffrax

    v, t0, t1 = flow
    if divergence_kind not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}; got {divergence_kind!r}")
    x = jnp.asarray(x, jnp.float32)
    probes = None
    if divergence_kind != "exact":
        if key is None:
            raise ValueError("Hutchinson's estimator needs a key for its probes")
        shape = (int(num_probes),) + x.shape
        probes = (jax.random.rademacher(key, shape, jnp.float32) if divergence_kind == "rademacher"
                  else jax.random.normal(key, shape, jnp.float32))

    def field(t, state, args):
        z, _ = state
        dz, div = divergence(v, z, t, divergence_kind, probes)
        return dz, div

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field), diffrax.Tsit5(), t0=float(t0), t1=float(t1), dt0=(float(t1) - float(t0)) / 64,
        y0=(x, jnp.zeros(x.shape[:1], jnp.float32)), stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps)
    z1, delta = sol.ys[0][-1], sol.ys[1][-1]
    prior = prior_log_prob(z1)
    return {"log_prob": prior + delta, "prior_log_prob": prior, "delta_log_prob": delta, "z1": z1,
            "num_steps": sol.stats["num_accepted_steps"]}


def dequantized_bits_per_dim(flow: tuple[Velocity, float, float], x: Array, key: Array, **options) -> dict[str, Array]:
    """An upper bound on -log2 P(x) per dimension of 8-bit images x (uint8 [B, H, W, C]) by uniform
    dequantisation: y = 2 (x + u) / 256 - 1, u ~ U(0, 1)^D, and -log P(x) <= -log p(y) - D log(2 / 256);
    ``options`` as in :func:`ode_log_likelihood` (``key`` also draws its probes)."""
    k_u, k_probe = jax.random.split(key)
    D = math.prod(x.shape[1:])
    y = 2.0 * (jnp.asarray(x, jnp.float32) + jax.random.uniform(k_u, x.shape)) / 256.0 - 1.0
    out = ode_log_likelihood(flow, y, k_probe, **options)
    nll = -(out["log_prob"] + D * math.log(2.0 / 256.0))
    return {**out, "nll_nats": nll, "bits_per_dim": nll / (D * math.log(2.0))}
