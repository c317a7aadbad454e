"""Observation models p_theta(x|z): the decoder's output distribution over data x.

A decoder emits a raw tensor ``params`` of shape ``[B, *event[:-1], num_params * event[-1]]``; the
likelihood splits its last axis into ``num_params`` equal parts (e.g. mean then log-scale) and
returns log p_theta(x|z) per example, summed over every non-batch axis, shape ``[B]``, in nats.

Data spaces (what ``x`` must contain):

* :class:`Bernoulli`: x in {0, 1} (binarised images); params are logits.
* :class:`Gaussian`: real x (toy data, or images in [0, 1]); params are the mean, plus the
    per-dimension log standard deviation when ``learned_scale=True``.
* :class:`DiscretizedLogistic`: 8-bit images scaled to [-1, 1], i.e. x = 2 * u / 255 - 1 for
    integer u in {0, ..., 255}; params are the mean and log-scale of a logistic whose mass is
    integrated over each of the 2^num_bits bins (Salimans et al. 2017, PixelCNN++).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol

import jax
import jax.numpy as jnp

from gen_jax.ops import LOG_2PI, sum_except_batch



def _split(params: jax.Array, x_shape: tuple[int, ...], num_params: int) -> list[jax.Array]:
    """Split decoder output ``[..., P * C]`` into P arrays ``[..., C]`` and check them against x."""
    if params.shape[-1] % num_params:
        raise ValueError(
                f"decoder output last axis {params.shape[-1]} is not divisible by num_params={num_params}.")
    parts = jnp.split(params, num_params, axis=-1)
    if x_shape is not None and parts[0].shape != tuple(x_shape):
        raise ValueError(
                f"decoder output shape {params.shape} does not match data shape {tuple(x_shape)} with "
                f"num_params={num_params} (expected last axis {num_params} * {x_shape[-1]}).")
    return parts


class Likelihood(Protocol):
    """What a decoder likelihood provides (see the module docstring for the params layout)."""

    num_params: int

    def log_prob(self, params: jax.Array, x: jax.Array) -> jax.Array:
        """log p_theta(x|z) per example, ``[B]``."""

    def mean(self, params: jax.Array) -> jax.Array:
        """The mean (or a representative point) of p_theta(x|z) in data space, shape of x."""

    def sample(self, rng: jax.Array, params: jax.Array) -> jax.Array:
        """A sample x ~ p_theta(x|z), shape of x."""


@dataclasses.dataclass(frozen=True)
class Bernoulli:
    """Bernoulli p_theta(x|z) = prod_i sigma(l_i)^{x_i} (1 - sigma(l_i))^{1 - x_i} with logits l.

    log p = sum_i [ x_i log sigma(l_i) + (1 - x_i) log sigma(-l_i) ].
    """

    num_params: int = 1

    def log_prob(self, params: jax.Array, x: jax.Array) -> jax.Array:
        (logits,) = _split(params, x.shape, 1)
        return sum_except_batch(x * jax.nn.log_sigmoid(logits) + (1.0 - x) * jax.nn.log_sigmoid(-logits))

    def mean(self, params: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(params)

    def sample(self, rng: jax.Array, params: jax.Array) -> jax.Array:
        return jax.random.bernoulli(rng, jax.nn.sigmoid(params)).astype(params.dtype)


@dataclasses.dataclass(frozen=True)
class Gaussian:
    """Gaussian p_theta(x|z) = N(x; mu_theta(z), diag(sigma^2)).

    log p = -1/2 sum_i [ log(2 pi) + 2 log sigma_i + (x_i - mu_i)^2 / sigma_i^2 ].

    Attributes:
        learned_scale: if True the decoder also outputs log sigma per dimension (num_params = 2);
            otherwise sigma = exp(log_scale) is fixed (num_params = 1).
        log_scale: the fixed log sigma used when ``learned_scale`` is False.
        min_log_scale: lower bound on a learned log sigma (a hard clip; keeps the density finite when
            the decoder collapses onto a point).
    """

    learned_scale: bool = True
    log_scale: float = 0.0
    min_log_scale: float = -7.0

    @property
    def num_params(self) -> int:
        return 2 if self.learned_scale else 1

    def _mean_log_scale(self, params: jax.Array, x_shape=None) -> tuple[jax.Array, jax.Array]:
        parts = _split(params, x_shape, self.num_params)
        if self.learned_scale:
            return parts[0], jnp.maximum(parts[1], self.min_log_scale)
        return parts[0], jnp.full_like(parts[0], self.log_scale)

    def log_prob(self, params: jax.Array, x: jax.Array) -> jax.Array:
        mu, log_s = self._mean_log_scale(params, x.shape)
        return sum_except_batch(-0.5 * (LOG_2PI + 2.0 * log_s + jnp.square(x - mu) * jnp.exp(-2.0 * log_s)))

    def mean(self, params: jax.Array) -> jax.Array:
        return self._mean_log_scale(params)[0]

    def sample(self, rng: jax.Array, params: jax.Array) -> jax.Array:
        mu, log_s = self._mean_log_scale(params)
        return mu + jnp.exp(log_s) * jax.random.normal(rng, mu.shape, mu.dtype)


def _log1mexp(a: jax.Array) -> jax.Array:
    """log(1 - exp(a)) for a <= 0, stable at both ends (Maechler 2012)."""
    a = jnp.minimum(a, -1e-30)
    return jnp.where(a > -math.log(2.0), jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(a)))


def _log_sigmoid_diff(hi: jax.Array, lo: jax.Array) -> jax.Array:
    """log(sigma(hi) - sigma(lo)) for hi > lo, using whichever tail keeps precision.

    sigma(hi) - sigma(lo) = sigma(-lo) - sigma(-hi), so when both arguments are large (hi + lo > 0)
    the difference is taken between the small upper-tail masses instead of two numbers near 1.
    """
    ls = jax.nn.log_sigmoid
    lower_tail = ls(hi) + _log1mexp(ls(lo) - ls(hi))
    upper_tail = ls(-lo) + _log1mexp(ls(-hi) - ls(-lo))
    return jnp.where(hi + lo > 0.0, upper_tail, lower_tail)


@dataclasses.dataclass(frozen=True)
class DiscretizedLogistic:
    """Discretised logistic p_theta(x|z) for 2^num_bits-level data scaled to [-1, 1].

    For a pixel value x (a bin centre 2u/(2^b - 1) - 1) with logistic mean mu and scale s = exp(log_s),
    and half bin width h = 1/(2^b - 1):

            P(x) = sigma((x + h - mu)/s) - sigma((x - h - mu)/s),

    with the first bin extended to -inf (P = sigma((x + h - mu)/s)) and the last to +inf
    (P = 1 - sigma((x - h - mu)/s)), so the 2^b probabilities of one pixel sum to exactly 1.
    log p_theta(x|z) = sum_i log P(x_i). Bits per dimension = -log p / (D log 2).

    Attributes:
        num_bits: bits per sub-pixel (8 for ordinary images).
        min_log_scale: lower bound on log s (as in PixelCNN++).
    """

    num_bits: int = 8
    min_log_scale: float = -7.0
    num_params: int = 2

    def _mean_log_scale(self, params: jax.Array, x_shape=None) -> tuple[jax.Array, jax.Array]:
        mu, log_s = _split(params, x_shape, 2)
        return mu, jnp.maximum(log_s, self.min_log_scale)

    def log_prob_elementwise(self, params: jax.Array, x: jax.Array) -> jax.Array:
        """log P(x_i) per sub-pixel, the shape of x."""
        mu, log_s = self._mean_log_scale(params, x.shape)
        half = 1.0 / (2**self.num_bits - 1)
        inv_s = jnp.exp(-log_s)
        hi = (x - mu + half) * inv_s
        lo = (x - mu - half) * inv_s
        log_cdf_hi = jax.nn.log_sigmoid(hi)  # first bin: P = sigma(hi)
        log_sf_lo = jax.nn.log_sigmoid(-lo)  # last bin: P = 1 - sigma(lo)
        mid = _log_sigmoid_diff(hi, lo)  # hi > lo always (h > 0, s > 0)
        edge = 1.0 - half  # bin centres are at most 2h apart, so these thresholds pick the end bins
        return jnp.where(x < -edge, log_cdf_hi, jnp.where(x > edge, log_sf_lo, mid))

    def log_prob(self, params: jax.Array, x: jax.Array) -> jax.Array:
        return sum_except_batch(self.log_prob_elementwise(params, x))

    def mean(self, params: jax.Array) -> jax.Array:
        """The logistic location clipped to [-1, 1] (the mode before discretisation)."""
        mu, _ = self._mean_log_scale(params)
        return jnp.clip(mu, -1.0, 1.0)

    def sample(self, rng: jax.Array, params: jax.Array) -> jax.Array:
        mu, log_s = self._mean_log_scale(params)
        u = jax.random.uniform(rng, mu.shape, mu.dtype, minval=1e-5, maxval=1.0 - 1e-5)
        y = jnp.clip(mu + jnp.exp(log_s) * (jnp.log(u) - jnp.log1p(-u)), -1.0, 1.0)
        levels = 2**self.num_bits - 1
        return jnp.round((y + 1.0) * 0.5 * levels) / levels * 2.0 - 1.0


LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_fixed", "logistic")


def get_likelihood(name: str | Likelihood) -> Likelihood:
    """Return a likelihood object from a name (``LIKELIHOODS``) or pass an object through.

    'gaussian' has a learned per-dimension scale; 'gaussian_fixed' uses sigma = 1; 'logistic' is the
    8-bit :class:`DiscretizedLogistic`.
    """
    if not isinstance(name, str):
        return name
    table = {
            "bernoulli": Bernoulli(),
            "gaussian": Gaussian(learned_scale=True),
            "gaussian_fixed": Gaussian(learned_scale=False),
            "logistic": DiscretizedLogistic(),
    }
    if name not in table:
        raise ValueError(f"likelihood={name!r}; expected one of {LIKELIHOODS} or a likelihood object.")
    return table[name]
