"""The flow objective: exact negative log-likelihood, dequantization and bits per dimension.

Continuous data (toy / tabular, float ``[B, D]``)::

    nll(x) = -log p_model(x) = -[log p_z(f(x)) + log|det df/dx|]          (nats)

8-bit images (uint8 ``[B, H, W, C]``, D = H*W*C). Uniform dequantization ``v = x + u``,
``u ~ U[0, 1)^D`` gives a continuous density on [0, 256)^D whose expected log-likelihood bounds the
discrete one: ``log P(x) >= E_u[log p_v(x + u)]``. The model sees ``y = v / 256`` in [0, 1) (its own
logit / affine pre-processing is a layer of the flow, with its log-det), so by the change of
variables ``log p_v(v) = log p_model(v / 256) - D log 256`` and

    nll_nats(x)     = -log p_model((x + u) / 256) + D log 256
    bits_per_dim(x) = nll_nats(x) / (D log 2)

which is the quantity of published tables (RealNVP MNIST 1.06, Glow CIFAR-10 3.35). A model that
is uniform on [0, 1)^D (log p_model = 0) scores exactly 8 bits/dim.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.data.preprocess import uniform_dequantize

Array = jax.Array
Metrics = dict[str, Array]


def discrete_nll_nats(log_prob_unit: Array, num_dims: int, num_bits: int = 8) -> Array:
    """``-log p_model(y) + D log 2^bits``: NLL in nats of the dequantized data in [0, 2^bits)^D space.

    Args:
      log_prob_unit: ``log p_model(y)`` of the model on y in [0, 1)^D, ``[B]``.
      num_dims: D.
      num_bits: bits per value (8 for 8-bit images).
    """
    return -log_prob_unit + num_dims * num_bits * math.log(2.0)


def bits_per_dim(nll_nats: Array, num_dims: int) -> Array:
    """``nll_nats / (D log 2)``."""
    return nll_nats / (num_dims * math.log(2.0))


def flow_nll(
    model: nn.Module, params: Any, x: Array, key: jax.Array | None = None, *, num_bits: int = 8
) -> Array:
    """Per-example negative log-likelihood in nats ``[B]``.

    Float ``x`` is continuous data: ``-log p_model(x)``. Integer ``x`` is ``num_bits`` image data:
    dequantized with ``key`` and measured in [0, 2^bits)^D space (module docstring).

    Args:
      model: a flow with a ``log_prob`` method (``FlowModel``).
      params: the ``'params'`` collection.
      x: data ``[B, ...]``.
      key: dequantization key (integer data only).
      num_bits: bits per value of integer data.
    """
    if jnp.issubdtype(x.dtype, jnp.integer):
        if key is None:
            raise ValueError("integer (8-bit) data needs a key for dequantization, got key=None")
        y = uniform_dequantize(key, x, num_bits)
        log_p = model.apply({"params": params}, y, method="log_prob")
        return discrete_nll_nats(log_p, math.prod(x.shape[1:]), num_bits)
    return -model.apply({"params": params}, x, method="log_prob")
