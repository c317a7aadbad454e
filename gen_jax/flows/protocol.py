"""A normalizing flow as a :class:`gen_jax.model.GenerativeModel`: maximum likelihood, exactly.

    loss = mean nll_nats(x) = -mean [log p_z(f(x)) + log|det df/dx|]          (continuous data)
    loss = mean bits_per_dim(x)                                              (8-bit images, dequantized)

(see :mod:`gen_jax.flows.losses` for the dequantization bound and the units).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from gen_jax.data.preprocess import uniform_dequantize
from gen_jax.flows.losses import bits_per_dim, flow_nll
from gen_jax.flows.models import FlowModel
from gen_jax.model import split_variables

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class NormalizingFlow:
    """A flow ``f: data -> latent`` trained by exact maximum likelihood.

    Attributes:
      flow: the flow module (``RealNVP``, ``NSF``, ``MAF``, ``MultiScaleRealNVP``, ``Glow``, ...).
      num_bits: bits per value of integer (image) data, dequantized uniformly.

    Batches: ``{'x': float [B, D]}`` (continuous data) or ``{'x': uint8 [B, H, W, C]}`` (images, whose
    samples come back in [0, 1]).
    """

    flow: FlowModel
    num_bits: int = 8

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.flow.event_shape)

    def init(self, key: Array, batch: dict) -> tuple[Any, dict]:
        """Parameters from a data-dependent initialisation (ActNorm: zero mean, unit variance on
        ``batch['x']``; integer data are dequantized first with a key split from ``key``)."""
        x = batch["x"]
        if jnp.issubdtype(x.dtype, jnp.integer):
            key, dq_key = jax.random.split(key)
            x = uniform_dequantize(dq_key, x, self.num_bits)
        return split_variables(self.flow.init(key, x))

    def nll(self, params: Any, x: Array, key: Array | None = None) -> Array:
        """Per-example negative log-likelihood in nats ``[B]`` (integer data: of the dequantized data
        in [0, 2^bits)^D, dequantized with ``key``)."""
        return flow_nll(self.flow, params, x, key, num_bits=self.num_bits)

    def log_prob(self, params: Any, x: Array, key: Array | None = None) -> Array:
        """``log p(x)`` per example ``[B]`` in nats (exact for continuous data)."""
        return -self.nll(params, x, key)

    def loss(self, params: Any, model_state: dict, batch: dict, rng: Array) -> tuple[Array, tuple[dict, dict]]:
        """Mean NLL in nats (continuous data) or bits/dim (integer data, dequantized with ``rng``);
        metrics ``nll_nats``, ``bits_per_dim``."""
        if "x" not in batch:
            raise ValueError(f"flow batches are dicts with key 'x', got keys {sorted(batch)}")
        x = batch["x"]
        nll = self.nll(params, x, rng)  # [B]
        metrics = {"nll_nats": jnp.mean(nll), "bits_per_dim": jnp.mean(bits_per_dim(nll, math.prod(x.shape[1:])))}
        loss = metrics["bits_per_dim"] if jnp.issubdtype(x.dtype, jnp.integer) else metrics["nll_nats"]
        return loss, (metrics, model_state)

    def sample(self, params: Any, key: Array, n: int, temperature: float = 1.0) -> Array:
        """``x = f^{-1}(T * eps)``, ``eps ~ N(0, I)``; image flows' samples clipped to [0, 1]."""
        x = self.flow.apply({"params": params}, key, n, temperature, method="sample")
        return jnp.clip(x, 0.0, 1.0) if len(self.event_shape) == 3 else x

    def latents(self, params: Any, x: Array) -> Array:
        """``z = f(x)``."""
        return self.flow.apply({"params": params}, x, method="forward")[0]
