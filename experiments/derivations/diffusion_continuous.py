"""Continuous-time diffusion (VDM): the T-step bound tends to the continuous one, DDPM's KL terms are the
T-step terms of the same log-SNR schedule, the continuous bound does not depend on the schedule between its
endpoints, and with the exact denoiser it is tight.

Settings: N(0, s^2 I) data, whose exact denoiser E[eps | z_t] = sigma_t z_t / (alpha_t^2 s^2 + sigma_t^2) gives
every term in closed form (``E||eps - eps_hat||^2 = D SNR s^2 / (SNR s^2 + 1)``), and the 2-D mixture of 4
Gaussians of :mod:`experiments.derivations.diffusion_setting` with its exact denoiser, whose log-density is
known. The log-SNR runs from 13.3 (t = 0) to -5 (t = 1), VDM's defaults.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from experiments.derivations.common import Check, Z, compare, float64, mean_and_se
from experiments.derivations.diffusion_setting import FAMILY, MEANS, STDS, WEIGHTS, mixture_eps
from gen_jax import diffusion

LMAX, LMIN = 13.3, -5.0


class GaussianDenoiser(nn.Module):
    """The exact E[eps | z_t] for N(0, s^2 I) data, read from the model's time input
    ``1000 (lmax - lambda) / (lmax - lmin)`` (one unused parameter: the contract has params)."""

    s: float = 1.0

    @nn.compact
    def __call__(self, z, t, label=None, train=False):
        self.param("unused", nn.initializers.zeros, ())
        lam = LMAX - jnp.asarray(t, jnp.float32) / 1000.0 * (LMAX - LMIN)
        a2, s2 = jax.nn.sigmoid(lam), jax.nn.sigmoid(-lam)
        return (jnp.sqrt(s2) / (a2 * self.s ** 2 + s2))[:, None] * z


class MixtureDenoiser(nn.Module):
    """The exact E[eps | z_t] for the 2-D mixture data (same time input as :class:`GaussianDenoiser`)."""

    @nn.compact
    def __call__(self, z, t, label=None, train=False):
        self.param("unused", nn.initializers.zeros, ())
        lam = LMAX - jnp.asarray(t, jnp.float32) / 1000.0 * (LMAX - LMIN)
        params = {"means": jnp.asarray(MEANS, z.dtype), "stds": jnp.asarray(STDS, z.dtype),
                  "log_w": jnp.asarray(np.log(WEIGHTS), z.dtype)}
        return mixture_eps(params, z, jax.nn.sigmoid(lam), jax.nn.sigmoid(-lam))


def gaussian_terms(D: int, s: float, lmax: float = LMAX, lmin: float = LMIN) -> dict[str, float]:
    """Closed forms (expectation over x ~ N(0, s^2 I)) of the three terms with the exact denoiser, and the entropy."""
    a1, s1 = scipy.special.expit(lmin), scipy.special.expit(-lmin)
    return {"prior": 0.5 * D * (s1 + a1 * s ** 2 - math.log(s1) - 1),
            "diffusion": 0.5 * D * (math.log1p(s ** 2 * math.exp(lmax)) - math.log1p(s ** 2 * math.exp(lmin))),
            "reconstruction": 0.5 * D * (math.log(2 * math.pi) - lmax + 1),
            "entropy": 0.5 * D * math.log(2 * math.pi * math.e * s ** 2)}


def t_step_diffusion(T: int, D: int, s: float, schedule: str = "linear",
                     weight_fn=diffusion.diffusion_loss_weight) -> float:
    """The T-step diffusion term for N(0, s^2 I) data with the exact denoiser: the mean over the T steps of the
    library's weight w_t times the closed-form E||eps - eps_hat||^2 (float64)."""
    sched = diffusion.make_log_snr_schedule(schedule, LMAX, LMIN)
    t = jnp.arange(1, T + 1, dtype=jnp.float64) / T
    lam, w = weight_fn(sched, {}, t, num_timesteps=T)
    snr = np.exp(np.asarray(lam, np.float64))
    return float(np.mean(np.asarray(w, np.float64) * D * snr * s ** 2 / (snr * s ** 2 + 1)))


@float64
def check_discrete_bound_tends_to_continuous(weight_fn=diffusion.diffusion_loss_weight) -> tuple[Check, Check]:
    """L^(T) for T = 10 .. 10^4 against the closed-form L^(infinity) (Gaussian data, exact denoiser)."""
    D, s = 2, 0.5
    cont = gaussian_terms(D, s)["diffusion"]
    Ts = [10, 100, 1000, 10_000]
    vals = np.array([t_step_diffusion(T, D, s, weight_fn=weight_fn) for T in Ts])
    gaps = vals - cont

    def plot(path):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        ax.loglog(Ts, np.maximum(gaps, 1e-12), "o-", label=r"$L^{(T)} - L^{(\infty)}$")
        ax.loglog(Ts, gaps[0] * 10 / np.asarray(Ts), "k:", label=r"$\propto 1/T$")
        ax.set_xlabel("T (steps)")
        ax.set_ylabel("nats")
        ax.set_title("T-step diffusion term vs continuous time (N(0, 0.25 I), exact denoiser)", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    limit = compare(
        FAMILY, "vdm_discrete_to_continuous", "The T-step VDM bound tends to the continuous-time one as T grows",
        r"L^{(T)} = \tfrac{T}{2}\,\mathbb{E}_i[(e^{\lambda_{s}-\lambda_{t}}-1)\|\epsilon-\hat\epsilon\|^2]"
        r"\;\to\; -\tfrac12\,\mathbb{E}_t[\lambda'(t)\|\epsilon-\hat\epsilon\|^2] = L^{(\infty)}",
        vals[-1], cont, 1e-3 * cont, plot=plot,
        lhs_how="diffusion.diffusion_loss_weight(..., num_timesteps=10^4) times the exact E||eps - eps_hat||^2, "
                "mean over the 10^4 steps",
        rhs_how="closed form D/2 [log(1 + s^2 e^lambda)] from lambda_min to lambda_max",
        note=f"T = {Ts}: L^(T) - L^(inf) = {', '.join(f'{g:.3g}' for g in gaps)} nats; tolerance 0.1 % of L^(inf).")
    rate = compare(
        FAMILY, "vdm_discrete_gap_rate", "The gap of the T-step bound shrinks like 1/T (10x per decade of T)",
        r"(L^{(10^3)} - L^{(\infty)}) / (L^{(10^4)} - L^{(\infty)}) = 10",
        gaps[-2] / gaps[-1], 10.0, 1.0, lhs_how="the gaps of the previous check", rhs_how="first-order Riemann sum",
        note="Tolerance 1 (the next order of the expansion).")
    return limit, rate


def check_ddpm_kl_is_vdm_step(T: int = 50, weight_fn=diffusion.diffusion_loss_weight) -> Check:
    """The DDPM bound's KL terms (t >= 2, reverse variance beta_tilde) of NoiseSchedule.from_log_snr equal the
    T-step VDM terms 1/2 expm1(lambda_{t-1} - lambda_t) ||eps - eps_hat||^2 of the same log-SNR schedule."""
    sched = diffusion.make_log_snr_schedule("cosine", 8.0, -6.0)
    ns = diffusion.NoiseSchedule.from_log_snr(lambda t: sched.apply({}, t), T)
    x = jax.random.normal(jax.random.key(1), (6, 3), jnp.float32)

    def apply_fn(params, xt, t, label=None):  # any fixed eps-predictor of (x_t, t)
        return 0.5 * jnp.tanh(xt) + 0.01 * t[:, None].astype(jnp.float32)

    rng = jax.random.key(2)
    out = diffusion.variational_bound(apply_fn, None, ns, x, rng, variance="small")
    i = jnp.arange(2, T + 1)
    _, w = weight_fn(sched, {}, i / T, num_timesteps=T)

    def vdm_term(t, w_t):
        eps = jax.random.normal(jax.random.fold_in(rng, t), x.shape, jnp.float32)  # the bound's noise
        a, s = jnp.sqrt(ns.alpha_bars[t - 1]), jnp.sqrt(1 - ns.alpha_bars[t - 1])
        e = apply_fn(None, a * x + s * eps, jnp.full((x.shape[0],), t))
        return w_t / T * jnp.sum(jnp.square(eps - e), axis=-1)

    lhs = np.asarray(out["terms_nats"][:, 1:], np.float64)
    rhs = np.asarray(jax.vmap(vdm_term, out_axes=1)(i, w), np.float64)
    return compare(
        FAMILY, "ddpm_kl_is_vdm_step", "One log-SNR schedule: DDPM's KL terms are the T-step VDM terms",
        r"\mathrm{KL}(q(x_{t-1}|x_t,x_0)\,\|\,p_\theta) = \tfrac12(e^{\lambda_{t-1}-\lambda_t}-1)\|\epsilon-\hat\epsilon\|^2",
        lhs, rhs, 2e-3 * np.abs(rhs) + 1e-5,
        lhs_how="diffusion.variational_bound(..., variance='small')['terms_nats'] on "
                "NoiseSchedule.from_log_snr(cosine log-SNR, T = 50)",
        rhs_how="diffusion.diffusion_loss_weight(..., num_timesteps=50) / T times ||eps - eps_hat||^2, same noise",
        note="float32 schedules (relative 2e-3: the KL is a difference of nearly equal Gaussians' parameters).")


def _bound(model, x, key, num_times):
    params, _ = model.init(jax.random.key(0))
    out = jax.jit(functools.partial(model.bound, num_times=num_times))(params, jnp.asarray(x, jnp.float32), key)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def mixture_samples(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n points of the mixture and their exact log-density (numpy, float64)."""
    rng = np.random.default_rng(seed)
    k = rng.choice(len(WEIGHTS), size=n, p=WEIGHTS)
    x = (MEANS[k] + STDS[k, None] * rng.normal(size=(n, 2))).astype(np.float32).astype(np.float64)
    d2 = np.sum(np.square(x[:, None] - MEANS[None]), -1) / np.square(STDS)[None]
    logp = scipy.special.logsumexp(np.log(WEIGHTS)[None] - 0.5 * d2 - np.log(2 * math.pi * np.square(STDS))[None],
                                   axis=1)
    return x, logp


def check_bound_tight_and_schedule_invariant(n: int, num_times: int) -> tuple[Check, Check]:
    """With the exact mixture denoiser, the continuous bound (three schedules with the same endpoints) equals
    E[-log p(x)] up to the two end terms' mismatch, and the schedules agree with each other."""
    x, logp = mixture_samples(n)
    bounds = {}
    for kind in ("linear", "cosine", "learned"):
        model = diffusion.VariationalDiffusionModel(MixtureDenoiser(),
                                                    diffusion.make_log_snr_schedule(kind, LMAX, LMIN, hidden=16), (2,))
        bounds[kind] = _bound(model, x, jax.random.key(3), num_times=num_times)["nll_nats"]
    gap_mean, gap_se = zip(*(mean_and_se(b + logp) for b in bounds.values()))
    gap_mean, gap_se = np.asarray(gap_mean), np.asarray(gap_se)
    tight = compare(
        FAMILY, "vdm_bound_tight", "With the exact denoiser the continuous-time bound is the NLL (mixture data)",
        r"L_{\rm prior} + L_{\rm diffusion} + L_{\rm rec} = \mathbb{E}[-\log p(x)]",
        gap_mean, 0.0, Z * gap_se + 0.01,
        lhs_how=f"VariationalDiffusionModel(exact mixture denoiser).bound(num_times={num_times}) - (-log p(x)) on {n} points, "
                "linear / cosine / learned (random) log-SNR schedules",
        rhs_how="0: the exact log-density of the mixture",
        note=f"Tolerance {Z:g} standard errors + 0.01 nats (the prior and decoder mismatch at lambda = -5 and 13.3). "
             f"Gaps: {', '.join(f'{k} {m:.4f} ± {s:.4f}' for k, m, s in zip(bounds, gap_mean, gap_se))}.")
    diffs = [bounds[k] - bounds["linear"] for k in ("cosine", "learned")]
    d_mean, d_se = zip(*(mean_and_se(d) for d in diffs))
    invariant = compare(
        FAMILY, "vdm_schedule_invariance", "The continuous-time bound depends on the schedule only through its endpoints",
        r"L_{\rm diffusion} = \tfrac12\int_{\lambda_{\min}}^{\lambda_{\max}} \mathbb{E}\|\epsilon-\hat\epsilon(z_\lambda)\|^2\,d\lambda",
        np.asarray(d_mean), 0.0, Z * np.asarray(d_se),
        lhs_how="bound(cosine) - bound(linear) and bound(learned) - bound(linear), per point, same data",
        rhs_how="0: a change of variables t -> lambda",
        note=f"Tolerance {Z:g} standard errors of the paired differences.")
    return tight, invariant


def checks(fast: bool) -> list[Callable[[], Check | Sequence[Check]]]:
    return [
        check_discrete_bound_tends_to_continuous,
        check_ddpm_kl_is_vdm_step,
        functools.partial(check_bound_tight_and_schedule_invariant, n=4000 if fast else 20_000,
                          num_times=128 if fast else 256),
    ]
