"""Continuous-time diffusion and its variational bound (Kingma et al. 2021, "Variational Diffusion Models").

Data x (images scaled to [-1, 1]) are noised by z_t = alpha_t x + sigma_t eps, t in [0, 1], with a log-SNR
schedule lambda(t) (:mod:`gen_jax.diffusion.log_snr`). The negative log-likelihood is bounded by three terms,
per example (nats):

    -log p(x) <= L_prior + L_diffusion + L_reconstruction
    L_prior          = KL(q(z_1 | x) || N(0, I))
    L_reconstruction = E_{z_0 ~ q(z_0 | x)} [-log p(x | z_0)]
    L_diffusion      = -1/2 E_{t ~ U(0, 1), eps} [lambda'(t) ||eps - eps_hat(z_t; lambda_t)||^2]      (T -> infinity)
    L_diffusion^(T)  = T/2 E_{i ~ U{1..T}, eps} [expm1(lambda_s - lambda_t) ||eps - eps_hat(z_t; lambda_t)||^2],
                       s = (i - 1) / T, t = i / T                                                 (T steps)

For 8-bit images p(x | z_0) is VDM's factorised decoder over the 256 values v_k = k 2/255 - 1 of each
pixel, p(x_i = v_k | z_0) proportional to exp(-(z_{0,i} / alpha_0 - v_k)^2 / (2 exp(-lambda_0))); for real
data it is N(x; z_0 / alpha_0, exp(-lambda_0) I). With a fixed network as a function of the log-SNR,
L_diffusion depends on the schedule only through its endpoints lambda(0), lambda(1) (a change of
variables to lambda); the schedule's shape changes only the variance of the Monte Carlo estimate, which is
what a learned schedule is trained to reduce (the gradient of E[L_diffusion^2] with respect to its shape).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.diffusion.log_snr import alpha_sigma, log_snr_and_derivative
from gen_jax.diffusion.losses import to_model_space
from gen_jax.diffusion.protocol import Denoising
from gen_jax.model import split_variables
from gen_jax.ops import sum_except_batch
from gen_jax.precision import Policy

__all__ = ["VariationalDiffusionModel", "prior_loss", "reconstruction_loss", "diffusion_loss_weight",
           "vdm_posterior_step"]

Array = jax.Array
_LN2 = math.log(2.0)
_ENDPOINTS = ("log_snr_max", "log_snr_min")


def _bcast(a: Array, x: Array) -> Array:
    return jnp.reshape(a, jnp.shape(a) + (1,) * (x.ndim - jnp.ndim(a)))


def prior_loss(log_snr_1: Array, x: Array) -> Array:
    """KL(q(z_1 | x) || N(0, I)) = 1/2 sum_i (sigma_1^2 + alpha_1^2 x_i^2 - log sigma_1^2 - 1), per example [B]."""
    alpha2, sigma2 = jax.nn.sigmoid(log_snr_1), jax.nn.sigmoid(-log_snr_1)
    kl = 0.5 * (sigma2 + alpha2 * jnp.square(x) - jax.nn.log_sigmoid(-log_snr_1) - 1.0)
    return sum_except_batch(kl)


def reconstruction_loss(log_snr_0: Array, x: Array, eps: Array, discrete: bool) -> Array:
    """-log p(x | z_0) per example [B] at z_0 = alpha_0 x + sigma_0 eps (see the module docstring).

    Args:
      log_snr_0: lambda(0), a scalar.
      x: data in model space [B, ...] (8-bit images on the grid k 2/255 - 1 when ``discrete``).
      eps: noise, the shape of x.
      discrete: 8-bit data (the 256-way decoder) or real data (a Gaussian decoder).
    """
    alpha0, sigma0 = alpha_sigma(log_snr_0)
    z0 = alpha0 * x + sigma0 * eps
    scaled = z0 / alpha0  # = x + exp(-lambda_0 / 2) eps
    if not discrete:
        log_scale = -0.5 * log_snr_0
        ll = -0.5 * jnp.square((x - scaled) * jnp.exp(-log_scale)) - log_scale - 0.5 * math.log(2.0 * math.pi)
        return -sum_except_batch(ll)
    values = (jnp.arange(256, dtype=jnp.float32) * (2.0 / 255.0) - 1.0).reshape((1,) * x.ndim + (256,))
    logits = -0.5 * jnp.square(scaled[..., None] - values) * jnp.exp(log_snr_0)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    k = jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.int32)
    ll = jnp.take_along_axis(log_probs, k[..., None], axis=-1)[..., 0]
    return -sum_except_batch(ll)


def diffusion_loss_weight(schedule: nn.Module, variables, t: Array, num_timesteps: int = 0) -> tuple[Array, Array]:
    """(lambda_t, w_t) with L_diffusion = w_t ||eps - eps_hat(z_t; lambda_t)||^2 per example:
    w_t = -lambda'(t) / 2 in continuous time (``num_timesteps`` 0); with T steps t is rounded up to the
    grid i / T and w_t = T/2 expm1(lambda((i - 1) / T) - lambda(i / T))."""
    if num_timesteps:
        T = int(num_timesteps)
        # i = ceil(t T); a t within 1e-3 / T above a grid point is that point (float rounding of i / T * T)
        t = jnp.clip(jnp.ceil(t * T - 1e-3), 1.0, T) / T
        lam_t = schedule.apply(variables, t)
        lam_s = schedule.apply(variables, t - 1.0 / T)
        return lam_t, 0.5 * T * jnp.expm1(lam_s - lam_t)
    lam_t, dlam = log_snr_and_derivative(schedule, variables, t)
    return lam_t, -0.5 * dlam


def vdm_posterior_step(z_t: Array, eps_hat: Array, lam_t: Array, lam_s: Array, noise: Array | None,
                       clip_x: float | None = None) -> Array:
    """One reverse step z_t -> z_s (s < t) of the learned process p(z_s | z_t) = q(z_s | z_t, x = x_hat):
    with c = -expm1(lambda_t - lambda_s) = 1 - SNR_t / SNR_s, mean alpha_s ((1 - c) z_t / alpha_t + c x_hat)
    and variance sigma_s^2 c; ``noise`` None takes the deterministic (DDIM) step
    z_s = alpha_s x_hat + sigma_s eps_hat instead."""
    alpha_t, sigma_t = alpha_sigma(lam_t)
    alpha_s, sigma_s = alpha_sigma(lam_s)
    x_hat = (z_t - sigma_t * eps_hat) / alpha_t
    if clip_x is not None:
        x_hat = jnp.clip(x_hat, -clip_x, clip_x)
        eps_hat = (z_t - alpha_t * x_hat) / sigma_t
    if noise is None:
        return alpha_s * x_hat + sigma_s * eps_hat
    c = -jnp.expm1(lam_t - lam_s)
    return alpha_s * ((1.0 - c) * z_t / alpha_t + c * x_hat) + sigma_s * jnp.sqrt(c) * noise


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _with_variance_gradient(loss_fn: Callable, params, lam, w, lam_shape, w_shape, extra):
    """``loss_fn(params, lam, w, extra)`` per example [B]. Backward: the usual cotangents for ``params``,
    ``lam`` and ``w`` (which carry the schedule's endpoints), and for ``lam_shape``/``w_shape`` (the same
    values, carrying the schedule's shape) those of L_i^2 / (2 mean(L)) instead of L_i, i.e. L_i / mean(L) dL_i
    (Kingma et al. 2021, sec. 5.2: the shape minimises the second moment, hence the variance, of the estimate,
    whose mean it does not change; divided by 2 mean(L), a constant, so that this gradient has the size of the
    bound's own and does not swamp gradient clipping). One backward pass serves both."""
    return loss_fn(params, lam, w, extra)


def _wvg_fwd(loss_fn, params, lam, w, lam_shape, w_shape, extra):
    loss, vjp = jax.vjp(lambda p, a, b: loss_fn(p, a, b, extra), params, lam, w)
    return loss, (vjp, loss)


def _wvg_bwd(loss_fn, res, g):
    vjp, loss = res
    g_params, g_lam, g_w = vjp(g)
    scale = loss / jnp.mean(loss)
    return g_params, g_lam, g_w, scale * g_lam, scale * g_w, None


_with_variance_gradient.defvjp(_wvg_fwd, _wvg_bwd)


@dataclasses.dataclass(frozen=True)
class VariationalDiffusionModel(Denoising):
    """A continuous-time (or T-step) diffusion model trained on its variational bound (VDM).

    Attributes:
      denoiser: an eps-predicting :class:`~gen_jax.diffusion.UNet` / :class:`~gen_jax.diffusion.MLPDenoiser`;
        it sees the log-SNR as its "time", ``time_scale (lmax - lambda) / (lmax - lmin)`` with the
        schedule's initial endpoints (0..1000 by default, the range of DDPM's integer timesteps).
      schedule: a log-SNR schedule module (:func:`gen_jax.diffusion.log_snr.make_log_snr_schedule`).
      data_shape: shape of one example; 3-D shapes are 8-bit images (uint8 batches).
      num_timesteps: 0 for the continuous-time bound; T > 0 for the T-step bound.
      time_scale: the range of the network's time input.
      antithetic_time: draw the B training times as u, u + 1/B, ... (mod 1): the low-variance estimate of
        VDM (the same expectation).
      cond_drop_prob: label dropout for classifier-free guidance (class-conditional denoisers).
      precision: the denoiser's compute dtype (:class:`gen_jax.precision.Policy`; the bound stays float32).

    ``params = {'denoiser': ..., 'schedule': ...}`` (the fixed schedules have no parameters). Loss metrics:
    ``loss`` (the bound, bits/dim for images, nats for real data), ``bits_per_dim``, ``nll_nats`` and its
    parts ``prior_nats``, ``diffusion_nats``, ``reconstruction_nats``, ``log_snr_min``, ``log_snr_max``.
    ``sample(params, key, n, **options)`` (options of :meth:`reverse_process`) returns data space.
    """

    denoiser: nn.Module
    schedule: nn.Module
    data_shape: tuple[int, ...]
    num_timesteps: int = 0
    time_scale: float = 1000.0
    antithetic_time: bool = True
    cond_drop_prob: float = 0.1
    precision: Policy = Policy()

    def __post_init__(self):
        if self.num_timesteps < 0:
            raise ValueError(f"num_timesteps must be 0 (continuous time) or a positive T; got {self.num_timesteps}")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must lie in [0, 1]; got {self.cond_drop_prob}")
        object.__setattr__(self, "data_shape", tuple(self.data_shape))

    @property
    def D(self) -> int:  # noqa: N802 - dimensions per example
        return math.prod(self.data_shape)

    # ------------------------------------------------------------------ pieces
    def log_snr(self, params: Any, t: Array) -> Array:
        """lambda(t) under the current schedule parameters."""
        return self.schedule.apply(self._schedule_vars(params["schedule"]), t)

    @staticmethod
    def _schedule_vars(p) -> dict:
        return {"params": p} if p else {}

    def _net_time(self, lam: Array) -> Array:
        lmax, lmin = float(self.schedule.log_snr_max), float(self.schedule.log_snr_min)
        return self.time_scale * (lmax - lam) / (lmax - lmin)

    def eps_hat(self, den_params: Any, z: Array, lam: Array, label: Array | None = None, *, train: bool = False,
                key: Array | None = None) -> Array:
        """The network's noise prediction at z_t with log-SNR lambda_t [B]."""
        rngs = {"dropout": key} if key is not None else {}
        return self.apply_denoiser(den_params, z, self._net_time(lam), label, train=train, rngs=rngs)

    def init(self, key: Array, batch: dict | None = None) -> tuple[Any, dict]:
        """``({'denoiser': ..., 'schedule': ...}, {})`` (shapes from ``data_shape``)."""
        k_den, k_sched = jax.random.split(key)
        k_den = jax.random.wrap_key_data(jax.random.bits(k_den, (4,), jnp.uint32), impl="rbg")
        x = jnp.zeros((1, *self.data_shape), jnp.float32)
        label = jnp.zeros((1,), jnp.int32) if self.num_classes else None
        den, state = split_variables(jax.jit(self.denoiser.init)(k_den, x, jnp.ones((1,), jnp.float32), label))
        sched = self.schedule.init(k_sched, jnp.zeros((1,), jnp.float32)).get("params", {})
        return {"denoiser": den, "schedule": sched}, state

    def _times(self, key: Array, B: int) -> Array:
        if self.antithetic_time:
            return jnp.mod(jax.random.uniform(key, ()) + jnp.arange(B, dtype=jnp.float32) / B, 1.0)
        return jax.random.uniform(key, (B,))

    def terms(self, params: Any, x: Array, t: Array, eps: Array, eps0: Array, *, label: Array | None = None,
              discrete: bool = True, train: bool = False, key: Array | None = None) -> dict[str, Array]:
        """The three terms of the bound per example [B] (nats), the diffusion term at times ``t`` [B]
        with noise ``eps`` and the reconstruction term with noise ``eps0``."""
        sched_p = params["schedule"]
        variables = self._schedule_vars(sched_p)
        lam_ends = self.schedule.apply(variables, jnp.asarray([0.0, 1.0], jnp.float32))
        extra = (x, eps, label, key)

        def loss_fn(den_params, lam, w, extra):
            x, eps, label, key = extra
            alpha, sigma = alpha_sigma(lam)
            z = _bcast(alpha, x) * x + _bcast(sigma, x) * eps
            e = self.eps_hat(den_params, z, lam, label, train=train, key=key)
            return w * sum_except_batch(jnp.square(eps - e))

        if train and sched_p and all(k in sched_p for k in _ENDPOINTS):  # a learned shape: variance gradient
            stop = jax.lax.stop_gradient
            ends = {k: v for k, v in sched_p.items() if k in _ENDPOINTS}
            shape = {k: v for k, v in sched_p.items() if k not in _ENDPOINTS}
            lam, w = diffusion_loss_weight(self.schedule, {"params": {**ends, **stop(shape)}}, t, self.num_timesteps)
            lam_s, w_s = diffusion_loss_weight(self.schedule, {"params": {**stop(ends), **shape}}, t,
                                               self.num_timesteps)
            diffusion = _with_variance_gradient(loss_fn, params["denoiser"], lam, w, lam_s, w_s, extra)
        else:
            lam, w = diffusion_loss_weight(self.schedule, variables, t, self.num_timesteps)
            diffusion = loss_fn(params["denoiser"], lam, w, extra)
        return {"prior_nats": prior_loss(lam_ends[1], x),
                "reconstruction_nats": reconstruction_loss(lam_ends[0], x, eps0, discrete),
                "diffusion_nats": diffusion, "log_snr_max": lam_ends[0], "log_snr_min": lam_ends[1]}

    # ------------------------------------------------------------------ the contract
    def objective(self, params: Any, batch: dict, rng: Array, train: bool = True) -> tuple[Array, dict]:
        """``(loss, metrics)``: the bound, one time per example (bits/dim for images, nats otherwise)."""
        x, discrete = to_model_space(batch["x"])
        k_t, k_eps, k_eps0, k_drop, k_cond = jax.random.split(rng, 5)
        t = self._times(k_t, x.shape[0])
        eps = jax.random.normal(k_eps, x.shape, x.dtype)
        eps0 = jax.random.normal(k_eps0, x.shape, x.dtype)
        label = self.train_labels(batch, k_cond, train)
        terms = self.terms(params, x, t, eps, eps0, label=label, discrete=discrete, train=train, key=k_drop)
        nll = terms["prior_nats"] + terms["reconstruction_nats"] + terms["diffusion_nats"]
        bpd = nll / (self.D * _LN2)
        metrics = {k: jnp.mean(v) for k, v in terms.items()}
        metrics.update(nll_nats=jnp.mean(nll), bits_per_dim=jnp.mean(bpd))
        loss = metrics["bits_per_dim"] if discrete else metrics["nll_nats"]
        metrics["loss"] = loss
        return loss, metrics

    def loss(self, params: Any, model_state: dict, batch: dict, rng: Array) -> tuple[Array, tuple[dict, dict]]:
        loss, metrics = self.objective(params, batch, rng, train=True)
        return loss, (metrics, model_state)

    def bound(self, params: Any, x: Array, key: Array, *, label: Array | None = None, num_times: int = 64) -> dict[str, Array]:
        """The bound on ``-log p(x)`` per example [B], its diffusion term averaged over ``num_times``
        stratified times t_k = (u + k) / K per example (an unbiased estimate; ``diffusion_se_nats`` is the
        standard error of that average). Returns ``bits_per_dim``, ``nll_nats``, ``prior_nats``,
        ``decoder_nats`` (the reconstruction term), ``diffusion_nats``, ``diffusion_se_nats``."""
        x, discrete = to_model_space(x)
        B, K = x.shape[0], int(num_times)
        if K < 1:
            raise ValueError(f"num_times must be >= 1; got {num_times}")
        k_u, k_eps, k_eps0 = jax.random.split(key, 3)
        u = jax.random.uniform(k_u, (B,))
        eps0 = jax.random.normal(k_eps0, x.shape, x.dtype)

        def at(k):
            t = jnp.mod(u + k / K, 1.0)
            eps = jax.random.normal(jax.random.fold_in(k_eps, k), x.shape, x.dtype)
            return self.terms(params, x, t, eps, eps0, label=label, discrete=discrete)

        first = at(0)
        diff = jax.lax.map(lambda k: at(k)["diffusion_nats"], jnp.arange(1, K)) if K > 1 else jnp.zeros((0, B))
        diff = jnp.concatenate([first["diffusion_nats"][None], diff])  # [K, B]
        diffusion = jnp.mean(diff, axis=0)
        se = jnp.std(diff, axis=0, ddof=1) / math.sqrt(K) if K > 1 else jnp.zeros_like(diffusion)
        nll = first["prior_nats"] + first["reconstruction_nats"] + diffusion
        return {"bits_per_dim": nll / (self.D * _LN2), "nll_nats": nll, "prior_nats": first["prior_nats"],
                "decoder_nats": first["reconstruction_nats"], "diffusion_nats": diffusion, "diffusion_se_nats": se}

    def data_predictor(self, params: Any, label: Array | None = None):
        """``(x_hat(z, lambda), lambda(0), lambda(1))``: x_hat = (z - sigma eps_hat(z; lambda)) / alpha (fast samplers)."""
        ends = self.log_snr(params, jnp.asarray([0.0, 1.0], jnp.float32))

        def x_hat(z, lam):
            a, s = alpha_sigma(lam)
            return (z - s * self.eps_hat(params["denoiser"], z, jnp.full(z.shape[:1], lam), label)) / a

        return x_hat, ends[0], ends[1]

    def probability_flow(self, params: Any, label: Array | None = None):
        """``(v(z, t), 0, 1)``: the probability-flow ODE of the noising process, v = alpha'_t x_hat + sigma'_t eps_hat
        with eps_hat the network's and x_hat = (z - sigma_t eps_hat) / alpha_t (derivatives by autodiff), for
        :func:`gen_jax.diffusion.ode_log_likelihood`."""
        variables = self._schedule_vars(params["schedule"])

        def v(z, t):
            lam, dlam = log_snr_and_derivative(self.schedule, variables, t)
            (a, s), (da, ds) = jax.jvp(alpha_sigma, (lam,), (dlam,))
            eps_hat = self.eps_hat(params["denoiser"], z, jnp.full(z.shape[:1], lam), label)
            return da * (z - s * eps_hat) / a + ds * eps_hat

        return v, 0.0, 1.0

    def reverse_process(self, params: Any, key: Array, n: int, *, num_steps: int = 256, deterministic: bool = False,
                        labels: Array | None = None, clip_x: float | None = None) -> Array:
        """Samples z_0 / alpha_0 in model space by ``num_steps`` reverse steps on the uniform grid of t
        (ancestral; ``deterministic``: the DDIM step), one ``lax.scan``."""
        if self.num_classes is not None and labels is None:
            labels = jnp.arange(n, dtype=jnp.int32) % self.num_classes
        return _vdm_sample(self, params, key, n, int(num_steps), bool(deterministic), labels, clip_x)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 7))
def _vdm_sample(model: VariationalDiffusionModel, params, key, n, num_steps, deterministic, labels, clip_x):
    shape = (n, *model.data_shape)
    k_init, k_steps = jax.random.split(key)
    z = jax.random.normal(k_init, shape, jnp.float32)
    grid = jnp.arange(num_steps, 0, -1, dtype=jnp.float32) / num_steps  # t = 1, ..., 1/N

    def step(z, t):
        s = t - 1.0 / num_steps
        lam = model.log_snr(params, jnp.stack([t, s]))
        eps_hat = model.eps_hat(params["denoiser"], z, jnp.full((n,), lam[0]), labels)
        noise = None if deterministic else jax.random.normal(jax.random.fold_in(k_steps, jnp.round(t * num_steps)
                                                                                 .astype(jnp.int32)), shape)
        return vdm_posterior_step(z, eps_hat, lam[0], lam[1], noise, clip_x), None

    z0, _ = jax.lax.scan(step, z, grid)
    alpha0, _ = alpha_sigma(model.log_snr(params, jnp.zeros((), jnp.float32)))
    x = z0 / alpha0
    return jnp.clip(x, -1.0, 1.0) if model.is_image else x
