"""Flow matching (Lipman et al. 2022) and rectified flow (Liu et al. 2022): regress a velocity field on the
conditional velocities of a probability path from the data to the noise, then sample by integrating the ODE.

With the diffusion convention of time (t = 0 data, t = 1 noise), the conditional path and its velocity are

    z_t = alpha_t x + sigma_t eps,        u_t(z_t | x, eps) = alpha'_t x + sigma'_t eps,

* ``'linear'`` (the optimal-transport path / rectified flow): alpha_t = 1 - t, sigma_t = t, u = eps - x;
* ``'vp'`` (variance preserving): alpha_t^2 = sigmoid(lambda(t)), sigma_t^2 = sigmoid(-lambda(t)) for a
  log-SNR schedule lambda (:mod:`gen_jax.diffusion.log_snr`; cosine by default), derivatives by autodiff.

The conditional flow-matching loss E_{t, x, eps} ||v_theta(z_t, t) - u_t(z_t | x, eps)||^2 differs from the
marginal one E ||v_theta(z_t, t) - u_t(z_t)||^2, u_t(z) = E[u_t(z_t | x, eps) | z_t = z], by a constant
independent of theta, so both have the same gradient (Lipman et al. 2022, theorem 2) and the same minimiser:
the marginal field, whose ODE dz/dt = u_t(z) carries N(0, I) at t = 1 to the data at t = 0.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.diffusion.log_snr import alpha_sigma, make_log_snr_schedule
from gen_jax.diffusion.losses import to_model_space
from gen_jax.diffusion.protocol import Denoising
from gen_jax.diffusion.solvers import invert_decreasing
from gen_jax.model import split_variables
from gen_jax.ops import mean_except_batch
from gen_jax.precision import Policy

__all__ = ["FlowMatchingModel", "FM_PATHS", "ODE_SOLVERS", "path_coefficients"]

Array = jax.Array
FM_PATHS = ("linear", "vp")
ODE_SOLVERS = ("euler", "heun")


def path_coefficients(path: str, t: Array, schedule: nn.Module | None = None) -> tuple[Array, Array, Array, Array]:
    """(alpha_t, sigma_t, alpha'_t, sigma'_t) of the path at times t (any shape)."""
    if path == "linear":
        t = jnp.asarray(t, jnp.float32)
        return 1.0 - t, t, -jnp.ones_like(t), jnp.ones_like(t)
    if path == "vp":
        if schedule is None:
            raise ValueError("the 'vp' path needs a log-SNR schedule")
        t = jnp.asarray(t, jnp.float32)
        (a, s), (da, ds) = jax.jvp(lambda u: alpha_sigma(schedule.apply({}, u)), (t,), (jnp.ones_like(t),))
        return a, s, da, ds
    raise ValueError(f"flow-matching path must be one of {FM_PATHS}; got {path!r}")


def _bcast(a: Array, x: Array) -> Array:
    return jnp.reshape(a, jnp.shape(a) + (1,) * (x.ndim - jnp.ndim(a)))


@dataclasses.dataclass(frozen=True)
class FlowMatchingModel(Denoising):
    """A velocity field v_theta(z_t, t) trained by conditional flow matching; samples by the ODE from t = 1 to 0.

    Attributes:
      denoiser: a :class:`~gen_jax.diffusion.UNet` / :class:`~gen_jax.diffusion.MLPDenoiser`, here predicting
        the velocity; it sees ``time_scale * t``.
      data_shape: shape of one example; 3-D shapes are 8-bit images (uint8 batches, scaled to [-1, 1]).
      path: ``'linear'`` (optimal transport / rectified flow) or ``'vp'``.
      log_snr_schedule, log_snr_max, log_snr_min: the 'vp' path's schedule (see
        :func:`gen_jax.diffusion.make_log_snr_schedule`; fixed, no parameters).
      time_scale: range of the network's time input (1000: DDPM's timesteps).
      cond_drop_prob: label dropout for classifier-free guidance (class-conditional denoisers).
      precision: the network's compute dtype (:class:`gen_jax.precision.Policy`; the loss stays float32).

    Loss metrics: ``loss`` = ``mse`` (per dimension, mean over the batch).
    """

    denoiser: nn.Module
    data_shape: tuple[int, ...]
    path: str = "linear"
    log_snr_schedule: str = "cosine"
    log_snr_max: float = 10.0
    log_snr_min: float = -10.0
    time_scale: float = 1000.0
    cond_drop_prob: float = 0.1
    precision: Policy = Policy()

    def __post_init__(self):
        if self.path not in FM_PATHS:
            raise ValueError(f"flow-matching path must be one of {FM_PATHS}; got {self.path!r}")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must lie in [0, 1]; got {self.cond_drop_prob}")
        object.__setattr__(self, "data_shape", tuple(self.data_shape))

    @property
    def schedule(self) -> nn.Module | None:
        if self.path != "vp":
            return None
        return make_log_snr_schedule(self.log_snr_schedule, self.log_snr_max, self.log_snr_min)

    def coefficients(self, t: Array) -> tuple[Array, Array, Array, Array]:
        """(alpha_t, sigma_t, alpha'_t, sigma'_t) at times t."""
        return path_coefficients(self.path, t, self.schedule)

    def velocity(self, params: Any, z: Array, t: Array, label: Array | None = None, *, train: bool = False,
                 key: Array | None = None) -> Array:
        """v_theta(z_t, t) for times t [B]."""
        rngs = {"dropout": key} if key is not None else {}
        return self.apply_denoiser(params, z, self.time_scale * t, label, train=train, rngs=rngs)

    def init(self, key: Array, batch: dict | None = None) -> tuple[Any, dict]:
        """Network parameters (shapes from ``data_shape``; ``batch`` is not needed)."""
        key = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
        x = jnp.zeros((1, *self.data_shape), jnp.float32)
        label = jnp.zeros((1,), jnp.int32) if self.num_classes else None
        return split_variables(jax.jit(self.denoiser.init)(key, x, jnp.ones((1,), jnp.float32), label))

    def conditional_target(self, x: Array, eps: Array, t: Array) -> tuple[Array, Array]:
        """(z_t, u_t(z_t | x, eps)) for times t [B]."""
        a, s, da, ds = (_bcast(c, x) for c in self.coefficients(t))
        return a * x + s * eps, da * x + ds * eps

    def objective(self, params: Any, batch: dict, rng: Array, train: bool = True) -> tuple[Array, dict]:
        """``(loss, metrics)``: the conditional flow-matching loss, t ~ U(0, 1)."""
        x, _ = to_model_space(batch["x"])
        k_t, k_eps, k_drop, k_cond = jax.random.split(rng, 4)
        t = jax.random.uniform(k_t, (x.shape[0],))
        eps = jax.random.normal(k_eps, x.shape, x.dtype)
        z, u = self.conditional_target(x, eps, t)
        label = self.train_labels(batch, k_cond, train)
        v = self.velocity(params, z, t, label, train=train, key=k_drop)
        mse = jnp.mean(mean_except_batch(jnp.square(v - u)))
        return mse, {"loss": mse, "mse": mse}

    def loss(self, params: Any, model_state: dict, batch: dict, rng: Array) -> tuple[Array, tuple[dict, dict]]:
        loss, metrics = self.objective(params, batch, rng, train=True)
        return loss, (metrics, model_state)

    def time_at(self, log_snr: Array) -> Array:
        """The time t whose path has log-SNR log(alpha_t^2 / sigma_t^2) = ``log_snr``."""
        if self.path == "linear":  # lambda = 2 log((1 - t) / t)
            return jax.nn.sigmoid(-0.5 * jnp.asarray(log_snr, jnp.float32))
        return invert_decreasing(lambda t: self.schedule.apply({}, t), log_snr)

    def data_predictor(self, params: Any, label: Array | None = None, t_min: float = 1e-3):
        """``(x_hat(z, lambda), lambda(t_min), lambda(1 - t_min))`` for z on the variance-preserving scale
        (z = alpha x + sigma eps with alpha^2 + sigma^2 = 1, as the fast samplers take it): rescaled to the path's
        z_t = (alpha_t / alpha) z at the time t of that log-SNR, and from v = alpha'_t x + sigma'_t eps,
        x_hat = (sigma'_t z_t - sigma_t v) / (sigma'_t alpha_t - sigma_t alpha'_t)."""
        def x_hat(z, lam):
            t = self.time_at(lam)
            a, s, da, ds = self.coefficients(t)
            z_t = z * (a / alpha_sigma(lam)[0])
            v = self.velocity(params, z_t, jnp.full(z.shape[:1], t), label)
            return (ds * z_t - s * v) / (ds * a - s * da)

        ends = [jnp.log(jnp.square(a / s)) for a, s, _, _ in [self.coefficients(jnp.float32(t_min)),
                                                              self.coefficients(jnp.float32(1 - t_min))]]
        return x_hat, ends[0], ends[1]

    def probability_flow(self, params: Any, label: Array | None = None, t_min: float = 1e-3):
        """``(v(z, t), t_min, 1)``: the learned velocity from (almost) the data to the noise, for
        :func:`gen_jax.diffusion.ode_log_likelihood` (``t_min`` > 0 keeps clear of the data's singular end)."""
        return (lambda z, t: self.velocity(params, z, jnp.full(z.shape[:1], t), label)), float(t_min), 1.0

    def reverse_process(self, params: Any, key: Array, n: int, *, num_steps: int = 100, solver: str = "heun",
                        labels: Array | None = None, t_min: float = 0.0, clip_x: float | None = None) -> Array:
        """Samples in model space: z_1 ~ N(0, I) integrated by dz/dt = v_theta(z, t) from t = 1 to ``t_min``
        in ``num_steps`` equal steps of ``solver`` ('euler': 1 network call per step; 'heun': 2, second order,
        the last step Euler), one ``lax.scan``."""
        if solver not in ODE_SOLVERS:
            raise ValueError(f"solver must be one of {ODE_SOLVERS}; got {solver!r}")
        if self.num_classes is not None and labels is None:
            labels = jnp.arange(n, dtype=jnp.int32) % self.num_classes
        return _fm_sample(self, params, key, n, int(num_steps), solver, labels, float(t_min), clip_x)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 7, 8))
def _fm_sample(model: FlowMatchingModel, params, key, n, num_steps, solver, labels, t_min, clip_x):
    shape = (n, *model.data_shape)
    z = jax.random.normal(key, shape, jnp.float32)
    grid = jnp.linspace(1.0, t_min, num_steps + 1, dtype=jnp.float32)
    v = lambda z, t: model.velocity(params, z, jnp.full((n,), t), labels)  # noqa: E731

    def step(z, ts):
        t, s = ts[0], ts[1]
        d = v(z, t)
        z_euler = z + (s - t) * d
        if solver == "euler":
            return z_euler, None
        # Heun: average the slopes at both ends, except into t = 0 where the field may be singular
        z_heun = z + 0.5 * (s - t) * (d + v(z_euler, s))
        return jnp.where(s > 0.0, z_heun, z_euler), None

    z, _ = jax.lax.scan(step, z, jnp.stack([grid[:-1], grid[1:]], axis=-1))
    if clip_x is not None:
        z = jnp.clip(z, -clip_x, clip_x)
    return z
