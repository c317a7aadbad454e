"""Toy 2D distributions with a sampler and an exact log-density.

Every distribution has ``sample(key, n) -> [n, 2]`` and ``log_prob(x [N, 2]) -> [N]`` (exact: closed
form, or a 1D quadrature over the curve parameter for the curve-shaped ones), plus ``entropy`` (nats,
Monte Carlo estimate of -E log p with a fixed key, computed once). Gaussian mixtures also expose
``means`` and ``std`` so :func:`gen_jax.metrics.mode_coverage` can score samples of any family.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_ENTROPY_SAMPLES = 200_000
_LOG_2PI = math.log(2 * math.pi)


class ToyDistribution:
    """Base class: subclasses define ``sample`` and ``log_prob``."""

    name: str = "toy"
    # Gaussian mixtures also have ``means`` [K, 2] and (when isotropic) ``std``.

    def sample(self, key: jax.Array, n: int) -> jax.Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_prob(self, x: jax.Array) -> jax.Array:  # pragma: no cover - abstract
        raise NotImplementedError

    @functools.cached_property
    def entropy(self) -> float:
        """H[p] = -E_p[log p(x)] in nats (Monte Carlo, 200k samples; standard error ~1e-3)."""
        x = self.sample(jax.random.key(12345), _ENTROPY_SAMPLES)
        return float(-jnp.mean(self.log_prob(x)))

    @property
    def bounds(self) -> tuple[float, float]:
        """A square [lo, hi]^2 that holds essentially all of the mass (for plots and quadrature)."""
        return (-3.0, 3.0)


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture(ToyDistribution):
    """p(x) = sum_k w_k N(x; mu_k, Sigma_k) with arbitrary means and covariances.

    Attributes:
      means: [K, 2] component means.
      covs: [K, 2, 2] positive-definite covariances.
      weights: [K] mixture weights (normalised on construction).
    """

    means: np.ndarray
    covs: np.ndarray
    weights: np.ndarray
    name: str = "gaussian_mixture"
    std: float | None = None

    def __post_init__(self):
        means = np.asarray(self.means, np.float64)
        covs = np.asarray(self.covs, np.float64)
        weights = np.asarray(self.weights, np.float64)
        if means.ndim != 2 or means.shape[1] != 2:
            raise ValueError(f"means must have shape [K, 2], got {means.shape}")
        k = means.shape[0]
        if covs.shape != (k, 2, 2):
            raise ValueError(f"covs must have shape [{k}, 2, 2], got {covs.shape}")
        if weights.shape != (k,) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum, got {weights}")
        if np.any(np.linalg.eigvalsh(covs) <= 0):
            raise ValueError("every covariance must be positive definite")
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "covs", covs)
        object.__setattr__(self, "weights", weights / weights.sum())

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        k_comp, k_eps = jax.random.split(key)
        comp = jax.random.categorical(k_comp, jnp.log(jnp.asarray(self.weights, jnp.float32)), shape=(n,))
        chol = jnp.asarray(np.linalg.cholesky(self.covs), jnp.float32)  # [K, 2, 2]
        eps = jax.random.normal(k_eps, (n, 2))
        return jnp.asarray(self.means, jnp.float32)[comp] + jnp.einsum("nij,nj->ni", chol[comp], eps)

    def log_prob(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)
        prec = jnp.asarray(np.linalg.inv(self.covs), jnp.float32)  # [K, 2, 2]
        logdet = jnp.asarray(np.linalg.slogdet(self.covs)[1], jnp.float32)  # [K]
        d = x[:, None, :] - jnp.asarray(self.means, jnp.float32)[None]  # [N, K, 2]
        maha = jnp.einsum("nki,kij,nkj->nk", d, prec, d)
        comp = -0.5 * (maha + logdet[None] + 2 * _LOG_2PI)
        return jax.scipy.special.logsumexp(comp + jnp.log(jnp.asarray(self.weights, jnp.float32))[None], axis=1)

    @property
    def bounds(self) -> tuple[float, float]:
        spread = 4 * math.sqrt(float(np.max(np.linalg.eigvalsh(self.covs))))
        return (float(self.means.min()) - spread - 0.5, float(self.means.max()) + spread + 0.5)


def isotropic_mixture(means, std: float, name: str) -> GaussianMixture:
    """Equal-weight mixture of N(mu_k, std^2 I)."""
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std!r}")
    means = np.asarray(means, np.float64)
    covs = np.tile(np.eye(2) * std**2, (len(means), 1, 1))
    return GaussianMixture(means=means, covs=covs, weights=np.ones(len(means)), name=name, std=float(std))


def ring8(num_modes: int = 8, radius: float = 2.0, std: float = 0.02) -> GaussianMixture:
    """Ring of Gaussians: ``num_modes`` equal modes on a circle of ``radius``, isotropic ``std``."""
    if num_modes < 1 or not radius > 0:
        raise ValueError(f"need num_modes >= 1 and radius > 0, got {num_modes!r}, {radius!r}")
    angles = 2 * np.pi * np.arange(num_modes) / num_modes
    return isotropic_mixture(radius * np.stack([np.cos(angles), np.sin(angles)], 1), std, "ring8")


def grid25(side: int = 5, spacing: float = 2.0, std: float = 0.05) -> GaussianMixture:
    """Grid of Gaussians as in PacGAN: means {-4,-2,0,2,4}^2, std 0.05 (defaults)."""
    c = spacing * (np.arange(side) - (side - 1) / 2)
    return isotropic_mixture(np.stack(np.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2), std, "grid25")


def eight_gaussians() -> GaussianMixture:
    """The 'eight Gaussians' of the FFJORD benchmarks: radius 2*sqrt(2), std 0.5/sqrt(2)."""
    angles = 2 * np.pi * np.arange(8) / 8
    means = 4 / math.sqrt(2) * np.stack([np.cos(angles), np.sin(angles)], 1)
    return isotropic_mixture(means, 0.5 / math.sqrt(2), "eight_gaussians")


@dataclasses.dataclass(frozen=True, eq=False)
class Checkerboard(ToyDistribution):
    """Uniform density on the 8 dark squares of a 4x4 board of side ``scale`` covering [-2s, 2s]^2."""

    scale: float = 1.0
    name: str = "checkerboard"

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        k1, k2, k3 = jax.random.split(key, 3)
        x1 = jax.random.uniform(k1, (n,), minval=-2.0, maxval=2.0)
        x2 = jax.random.uniform(k2, (n,)) - 2.0 * jax.random.bernoulli(k3, 0.5, (n,)) + jnp.floor(x1) % 2
        return jnp.stack([x1, x2], 1) * self.scale

    def log_prob(self, x: jax.Array) -> jax.Array:
        u = jnp.asarray(x, jnp.float32) / self.scale
        inside = jnp.all(jnp.abs(u) <= 2.0, axis=1)
        dark = (jnp.floor(u[:, 0]) + jnp.floor(u[:, 1])) % 2 == 0
        return jnp.where(inside & dark, -jnp.log(8.0 * self.scale**2), -jnp.inf)

    @property
    def bounds(self) -> tuple[float, float]:
        return (-2.2 * self.scale, 2.2 * self.scale)


@dataclasses.dataclass(frozen=True, eq=False)
class NoisyCurve(ToyDistribution):
    """x = c(t) + noise * eps, t ~ U[0, 1], eps ~ N(0, I): two moons, swiss roll.

    log p(x) = log int_0^1 N(x; c(t), noise^2 I) dt, computed by a 4096-point midpoint rule in t
    (the curve moves less than ``noise / 4`` between nodes, so the quadrature error is negligible).
    """

    kind: str = "two_moons"
    noise: float = 0.1
    name: str = "two_moons"
    _nodes: int = 4096

    def curve(self, t: jax.Array) -> jax.Array:
        if self.kind == "two_moons":
            upper = t < 0.5
            a = jnp.pi * jnp.where(upper, 2 * t, 2 * t - 1)
            x = jnp.where(upper, jnp.cos(a), 1.0 - jnp.cos(a))
            y = jnp.where(upper, jnp.sin(a), 0.5 - jnp.sin(a))
            return jnp.stack([x - 0.5, y - 0.25], -1) * 1.5
        if self.kind == "swiss_roll":
            a = 1.5 * jnp.pi * (1 + 2 * t)
            return jnp.stack([a * jnp.cos(a), a * jnp.sin(a)], -1) / 5.0
        raise ValueError(f"kind must be 'two_moons' or 'swiss_roll', got {self.kind!r}")

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        kt, ke = jax.random.split(key)
        return self.curve(jax.random.uniform(kt, (n,))) + self.noise * jax.random.normal(ke, (n, 2))

    def log_prob(self, x: jax.Array) -> jax.Array:
        t = (jnp.arange(self._nodes) + 0.5) / self._nodes
        c = self.curve(t)  # [T, 2]

        def one(xi):
            sq = jnp.sum((xi[None] - c) ** 2, -1)
            return jax.scipy.special.logsumexp(-0.5 * sq / self.noise**2) - math.log(self._nodes)

        norm = -_LOG_2PI - 2 * math.log(self.noise)
        return jax.lax.map(one, jnp.asarray(x, jnp.float32), batch_size=256) + norm


def two_moons(noise: float = 0.1) -> NoisyCurve:
    return NoisyCurve(kind="two_moons", noise=noise, name="two_moons")


def swiss_roll(noise: float = 0.1) -> NoisyCurve:
    return NoisyCurve(kind="swiss_roll", noise=noise, name="swiss_roll")


def checkerboard(scale: float = 1.0) -> Checkerboard:
    return Checkerboard(scale=scale)


TOY_DATASETS = {
    "ring8": ring8,
    "grid25": grid25,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "two_moons": two_moons,
    "swiss_roll": swiss_roll,
}


def get_toy(name: str, **kwargs) -> ToyDistribution:
    """A toy distribution by name (one of ``TOY_DATASETS``), with keyword overrides."""
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; expected one of {sorted(TOY_DATASETS)}")
    return TOY_DATASETS[name](**kwargs)


class ToyBatches:
    """Deterministic, resumable batches from a toy distribution.

    The batch of step s is ``dist.sample(fold_in(key(seed), s), batch_size)``: O(1) to resume, and the
    same for a resumed and an uninterrupted run. Process p of P draws its own ``batch_size / P`` rows.
    """

    def __init__(self, dist: ToyDistribution, batch_size: int, seed: int = 0,
                 process_index: int = 0, num_processes: int = 1):
        if batch_size < 1 or batch_size % num_processes:
            raise ValueError(f"batch_size must be >= 1 and divisible by the number of processes "
                             f"{num_processes}, got {batch_size}")
        self.dist, self.batch_size = dist, batch_size
        self._key = jax.random.fold_in(jax.random.key(seed), process_index)
        local = batch_size // num_processes
        self._sample = jax.jit(lambda key, step: dist.sample(jax.random.fold_in(key, step), local))

    def batch_at(self, step: int) -> dict[str, jax.Array]:
        # the step index goes to the device explicitly: no implicit transfer (transfer_guard-clean)
        return {"x": self._sample(self._key, jax.device_put(np.uint32(step)))}

    def __call__(self, start_step: int = 0):
        step = start_step
        while True:
            yield self.batch_at(step)
            step += 1
