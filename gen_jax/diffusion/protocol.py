"""A diffusion model as a :class:`gen_jax.model.GenerativeModel`: the denoising loss, DDPM/DDIM sampling,
and the variational bound on ``-log p(x)``.

Per example of the loss: t ~ U{1..T}, eps ~ N(0, I), x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,
loss = w_t * mean_d (target - f_theta(x_t, t))^2 (see :func:`gen_jax.diffusion.loss_weight`); with the
defaults this is L_simple = E ||eps - eps_theta(x_t, t)||^2.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.diffusion.losses import (PARAMETERIZATIONS, WEIGHTINGS, denoising_loss, make_denoise_fn,
                                      to_model_space, variational_bound)
from gen_jax.diffusion.log_snr import alpha_sigma
from gen_jax.diffusion.process import q_sample
from gen_jax.diffusion.samplers import ddim_sample, ddpm_sample
from gen_jax.diffusion.schedules import NoiseSchedule
from gen_jax.model import split_variables
from gen_jax.precision import Policy

Array = jax.Array


class Denoising:
    """What every diffusion model built on a denoiser network shares (``denoiser``, ``data_shape``,
    ``cond_drop_prob`` and ``precision`` attributes): the denoiser's application, conditioning, the data space,
    sampling through ``reverse_process``."""

    def apply_denoiser(self, params: Any, z: Array, t: Array, label: Array | None = None, *, train: bool = False,
                       rngs: dict | None = None) -> Array:
        """The denoiser network at ``(z, t, label)``, computing in ``self.precision``'s dtype (float32 out)."""
        return self.precision.apply(self.denoiser, {"params": params}, z, t, label, train=train, rngs=rngs or {})

    @property
    def num_classes(self) -> int | None:
        return getattr(self.denoiser, "num_classes", None)

    @property
    def is_image(self) -> bool:
        return len(self.data_shape) == 3

    def train_labels(self, batch: dict, key: Array, train: bool) -> Array | None:
        """The labels the denoiser sees (None for an unconditional one); while training each is replaced by the
        null label (index ``num_classes``) with probability ``cond_drop_prob`` (classifier-free guidance)."""
        if self.num_classes is None:
            return None
        if "label" not in batch:
            raise ValueError("class-conditional denoiser (num_classes set) needs batch['label']")
        label = jnp.asarray(batch["label"], jnp.int32)
        if train:
            drop = jax.random.bernoulli(key, self.cond_drop_prob, label.shape)
            label = jnp.where(drop, self.num_classes, label)
        return label

    def to_data(self, x: Array) -> Array:
        """Model space -> data space (images: [-1, 1] -> [0, 1], clipped)."""
        return jnp.clip((x + 1.0) * 0.5, 0.0, 1.0) if self.is_image else x

    def probability_flow(self, params: Any, label: Array | None = None):
        """``(v(z, t), 0, 1)``: the probability-flow ODE of the noising process z = alpha x + sigma eps between the
        model's log-SNR ends lambda(0) > lambda(1) of :meth:`data_predictor`, time linear in log-SNR (the
        likelihood does not depend on how time is parameterised): v = alpha'_t x_hat + sigma'_t eps_hat with x_hat the
        data predictor and eps_hat = (z - alpha_t x_hat) / sigma_t (for
        :func:`gen_jax.diffusion.ode_log_likelihood`). Models with their own time (VDM's schedule, flow matching's
        path) override it."""
        x_hat, lam0, lam1 = self.data_predictor(params, label)

        def v(z, t):
            lam = lam0 + (lam1 - lam0) * t
            (a, s), (da, ds) = jax.jvp(alpha_sigma, (lam,), (jnp.asarray(lam1 - lam0, lam.dtype),))
            x = x_hat(z, lam)
            return da * x + ds * (z - a * x) / s

        return v, 0.0, 1.0

    def sample(self, params: Any, key: Array, n: int, **options) -> Array:
        """``n`` samples in data space; ``options`` as in :meth:`reverse_process` (without ``trajectory``), or
        ``sampler`` 'dpm_solver_pp_2m' / 'dpm_solver_pp_2m_sde' / 'edm_heun' with ``num_steps``, ``labels``,
        ``clip_x`` (:func:`gen_jax.diffusion.fast_sample`)."""
        from gen_jax.diffusion.solvers import FAST_SAMPLERS, fast_sample

        if options.get("sampler") in FAST_SAMPLERS:
            return self.to_data(fast_sample(self, params, key, n, **options))
        return self.to_data(self.reverse_process(params, key, n, **options))


@dataclasses.dataclass(frozen=True)
class DiffusionModel(Denoising):
    """A denoiser trained to reverse a fixed noising process.

    Attributes:
      denoiser: a :class:`~gen_jax.diffusion.UNet` / :class:`~gen_jax.diffusion.MLPDenoiser` (called with
        ``train`` and a 'dropout' rng); with ``num_classes`` set it is class-conditional.
      schedule: the noise schedule.
      data_shape: the shape of one example; 3-D shapes are 8-bit images (uint8 batches, scaled to
        [-1, 1] inside; samples returned in [0, 1]).
      parameterization: what the network predicts: 'eps', 'x0' or 'v'.
      weighting: 'simple', 'vlb' or 'min_snr' (see :func:`gen_jax.diffusion.loss_weight`).
      min_snr_gamma: gamma of Min-SNR weighting.
      variance: reverse variance of the 'vlb' weights ('small' = beta_tilde, 'large' = beta).
      cond_drop_prob: probability of replacing a label by the null label (index num_classes) while
        training, so that one network learns conditional and unconditional eps (classifier-free guidance).
      precision: the denoiser's compute dtype (:class:`gen_jax.precision.Policy`; the loss stays float32).

    Loss metrics: ``loss``, ``mse`` (unweighted, in the network's output space).
    """

    denoiser: nn.Module
    schedule: NoiseSchedule
    data_shape: tuple[int, ...]
    parameterization: str = "eps"
    weighting: str = "simple"
    min_snr_gamma: float = 5.0
    variance: str = "large"
    cond_drop_prob: float = 0.1
    precision: Policy = Policy()
    apply_fn: Callable = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}; got {self.parameterization!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}; got {self.weighting!r}")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must lie in [0, 1]; got {self.cond_drop_prob}")
        object.__setattr__(self, "data_shape", tuple(self.data_shape))
        # Built once: the samplers take it as a static (hashed) argument.
        object.__setattr__(self, "apply_fn", make_denoise_fn(self.denoiser, self.precision))

    def init(self, key: Array, batch: dict | None = None) -> tuple[Any, dict]:
        """Denoiser parameters (shapes from ``data_shape``; ``batch`` is not needed)."""
        # Initialised from an 'rbg' key derived from ``key``: the same parameters for the same key, and XLA
        # compiles a U-Net's many initialisers several times faster than with threefry on CPU.
        key = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
        x = jnp.zeros((1, *self.data_shape), jnp.float32)
        label = jnp.zeros((1,), jnp.int32) if self.num_classes else None
        return split_variables(jax.jit(self.denoiser.init)(key, x, jnp.ones((1,), jnp.int32), label))

    def objective(self, params: Any, batch: dict, rng: Array, train: bool = True) -> tuple[Array, dict]:
        """``(loss, metrics)``; ``train=False`` is the deterministic evaluation loss (dropout off, labels
        never dropped; data augmentation such as random flips belongs to the data pipeline:
        :class:`gen_jax.data.Batches`)."""
        x0, _ = to_model_space(batch["x"])
        B = x0.shape[0]
        # five keys, as when flips were drawn here (the fifth): the same keys, the same runs
        k_t, k_eps, k_drop, k_cond, _ = jax.random.split(rng, 5)
        t = jax.random.randint(k_t, (B,), 1, self.schedule.num_timesteps + 1)
        eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
        xt = q_sample(self.schedule, x0, t, eps)
        label = self.train_labels(batch, k_cond, train)
        out = self.apply_denoiser(params, xt, t, label, train=train, rngs={"dropout": k_drop})
        per_ex, mse = denoising_loss(self.schedule, out, x0, eps, t, parameterization=self.parameterization,
                                     weighting=self.weighting, min_snr_gamma=self.min_snr_gamma,
                                     variance=self.variance)
        loss = jnp.mean(per_ex)
        return loss, {"loss": loss, "mse": jnp.mean(mse)}

    def loss(self, params: Any, model_state: dict, batch: dict, rng: Array) -> tuple[Array, tuple[dict, dict]]:
        loss, metrics = self.objective(params, batch, rng, train=True)
        return loss, (metrics, model_state)

    def reverse_process(self, params: Any, key: Array, n: int, *, sampler: str = "ddpm",
                        labels: Array | None = None, guidance_scale: float | None = None,
                        ddpm_variance: str = "small", ddim_steps: int = 50, ddim_eta: float = 0.0,
                        ddim_spacing: str = "uniform", clip_x0: float | None = None, trajectory: bool = False):
        """Samples in the model's space ([-1, 1] for images), optionally with the reverse trajectory
        (see :func:`gen_jax.diffusion.ddpm_sample`). Class-conditional models get ``labels`` (default:
        0, 1, ..., cycling over the classes) and ``guidance_scale`` (None: plain conditional sampling)."""
        if self.num_classes is not None and labels is None:
            labels = jnp.arange(n, dtype=jnp.int32) % self.num_classes
        common = dict(label=labels if self.num_classes else None,
                      guidance_scale=None if self.num_classes is None else guidance_scale,
                      parameterization=self.parameterization, clip_x0=clip_x0, return_trajectory=trajectory)
        shape = (n, *self.data_shape)
        if sampler == "ddpm":
            return ddpm_sample(self.apply_fn, params, self.schedule, key, shape, variance=ddpm_variance, **common)
        if sampler == "ddim":
            return ddim_sample(self.apply_fn, params, self.schedule, key, shape, num_steps=int(ddim_steps),
                               eta=float(ddim_eta), spacing=ddim_spacing, **common)
        raise ValueError(f"sampler must be 'ddpm' or 'ddim'; got {sampler!r}")

    def data_predictor(self, params: Any, label: Array | None = None):
        """``(x_hat(z, lambda), lambda_1, lambda_T)``: the network's data prediction at any log-SNR between the
        schedule's, at the fractional timestep whose interpolated log-SNR is lambda (for the fast samplers)."""
        lam_table = self.schedule.log_snr  # [T], decreasing in t
        steps = jnp.arange(1, self.schedule.num_timesteps + 1, dtype=jnp.float32)

        def x_hat(z, lam):
            tau = jnp.interp(-lam, -lam_table, steps)
            out = self.apply_fn(params, z, jnp.full(z.shape[:1], tau), label)
            a, s = alpha_sigma(lam)
            if self.parameterization == "eps":
                return (z - s * out) / a
            return out if self.parameterization == "x0" else a * z - s * out

        return x_hat, lam_table[0], lam_table[-1]

    def bound(self, params: Any, x: Array, key: Array, *, label: Array | None = None, variance: str = "large",
              t_chunk: int = 1) -> dict[str, Array]:
        """The full variational bound on ``-log p(x)`` per example and its terms
        (:func:`gen_jax.diffusion.variational_bound`)."""
        return variational_bound(self.apply_fn, params, self.schedule, x, key, label=label,
                                 parameterization=self.parameterization, variance=variance, t_chunk=t_chunk)
