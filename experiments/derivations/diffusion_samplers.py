"""Diffusion derivations, the samplers: DDIM with eta = 1 is DDPM, and with the exact denoiser of the mixture
both sample the data (see :mod:`experiments.derivations.diffusion`)."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.derivations.common import (
    Check,
    Z,
    compare,
    float64,
    jit,
    kolmogorov_critical,
    ks_statistic,
    ks_two_sample,
)
from experiments.derivations.diffusion_setting import (
    FAMILY,
    MEANS,
    PROJECTIONS,
    STDS,
    T_MAIN,
    WEIGHTS,
    denoiser_params,
    gmm_eps,
    mixture_cdf,
    mixture_posterior,
)
from gen_jax import diffusion

T_SHORT = 20  # the pathwise DDIM/DDPM comparison: few float32 steps, so rounding stays small
PATHWISE_TOL = 1e-3


@functools.lru_cache(maxsize=None)
def sampler_outputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """DDPM and DDIM samples with the exact mixture denoiser, and mixture data.

    T = 1000: DDPM, and DDIM with eta = 1 and eta = 0 on another key (one vmapped sampler).
    T = 20 (linear 1e-3 .. 0.3): DDPM, and DDIM with eta = 1 and 0.99 on DDPM's key. The samplers keep
    float32 state, so they use the library's float32 schedules.
    """
    sched = diffusion.NoiseSchedule.linear(T_MAIN)
    short = diffusion.NoiseSchedule.linear(T_SHORT, 1e-3, 0.3)
    shape = (n, 2)

    @functools.partial(jit, optimize=True)  # run-time bound: 1000-step loops
    def run(sched, params, short, short_params):
        k_same, k_other = jax.random.split(jax.random.key(seed))

        def ddim(sched, params, key, etas):
            return jax.vmap(lambda e: diffusion.ddim_sample(gmm_eps, params, sched, key, shape, eta=e))(etas)

        main = ddim(sched, params, k_other, jnp.asarray([1.0, 0.0], jnp.float32))
        short_ddim = ddim(short, short_params, k_same, jnp.asarray([1.0, 0.99], jnp.float32))
        return {"ddpm": diffusion.ddpm_sample(gmm_eps, params, sched, k_same, shape, variance="small"),
                "ddim_eta1_other_key": main[0], "ddim_eta0": main[1],
                "short_ddpm": diffusion.ddpm_sample(gmm_eps, short_params, short, k_same, shape, variance="small"),
                "short_ddim_eta1": short_ddim[0], "short_ddim_eta099": short_ddim[1]}

    out = jax.tree.map(np.asarray, run(sched, denoiser_params(sched), short, denoiser_params(short)))
    rng = np.random.default_rng(seed)
    comp = rng.choice(len(WEIGHTS), n, p=WEIGHTS)
    out["data"] = MEANS[comp] + STDS[comp][:, None] * rng.standard_normal((n, 2))
    return out


@float64
def check_ddim_eta1_is_ddpm(n: int) -> tuple[Check, Check]:
    """DDIM with eta = 1 over all T steps is DDPM (sigma_t^2 = beta_tilde_t): path by path with the
    same key, and in distribution with different keys."""
    s = sampler_outputs(n)
    diff = np.abs(s["short_ddim_eta1"] - s["short_ddpm"])
    moved = np.abs(s["short_ddim_eta099"] - s["short_ddpm"])
    same = compare(
        FAMILY, "ddim_eta1_equals_ddpm_pathwise", "DDIM(eta = 1, all steps) follows the DDPM path given the same noise",
        r"\sqrt{\bar\alpha_{t-1}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t-1}-\tilde\beta_t}\,\hat\epsilon + "
        r"\sqrt{\tilde\beta_t}\,z"
        r" = \tilde\mu_t(x_t, \hat x_0) + \sqrt{\tilde\beta_t}\,z",
        s["short_ddim_eta1"], s["short_ddpm"], PATHWISE_TOL,
        lhs_how=f"diffusion.ddim_sample(eta=1.0), {n} samples, T = {T_SHORT} (linear beta from 1e-3 to 0.3)",
        rhs_how="diffusion.ddpm_sample(variance='small'), same key",
        note=f"The samplers run in float32: the paths agree to {np.median(diff):.0e} in median and "
             f"{np.max(diff):.0e} at worst (rounding, amplified near the boundaries between modes); absolute "
             f"tolerance {PATHWISE_TOL:g}. For scale, eta = 0.99 instead of 1 moves the paths by "
             f"{np.median(moved):.0e} in median and {np.max(moved):.0e} at most. (A short schedule keeps the "
             "rounding small; the identity holds step by step for any T.)")
    proj_a, proj_b = s["ddim_eta1_other_key"] @ PROJECTIONS.T, s["ddpm"] @ PROJECTIONS.T
    stats = np.array([ks_two_sample(proj_a[:, j], proj_b[:, j]) for j in range(PROJECTIONS.shape[0])])
    crit = kolmogorov_critical(n, 1e-3 / PROJECTIONS.shape[0]) * math.sqrt(2.0)  # two samples of size n
    dist = compare(
        FAMILY, "ddim_eta1_equals_ddpm_in_distribution", "DDIM(eta = 1) and DDPM give the same distribution",
        r"\sup_y |\hat F_\mathrm{DDIM}(y) - \hat F_\mathrm{DDPM}(y)| \le c_{0.999}\ \text{on 4 projections}",
        stats, crit, 0.0, relation="<=",
        lhs_how=f"two-sample KS statistics of {n} DDIM(eta=1) samples (another key) vs {n} DDPM samples",
        rhs_how="critical value at level 1e-3 (Bonferroni over 4 projections)",
        note="Samples projected on e_1, e_2 and the two diagonals.")
    return same, dist


def _plot_samples(s: dict):
    def plot(path):
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
        for ax, (key, title) in zip(axes, (("data", "data (mixture of 4 Gaussians)"),
                                          ("ddpm", "DDPM, exact "
                                                   "denoiser"), ("ddim_eta0", "DDIM eta=0, exact denoiser"))):
            ax.scatter(s[key][:, 0], s[key][:, 1], s=2, alpha=0.4)
            ax.set_title(title, fontsize=9)
            ax.set_xlim(-2, 2)
            ax.set_ylim(-2, 2)
            ax.set_aspect("equal")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    return plot


@float64
def check_exact_denoiser_recovers_data(n: int) -> list[Check]:
    """With the exact eps of the mixture, DDPM and DDIM(eta = 0) samples follow the data (KS tests)."""
    s = sampler_outputs(n)
    out = []
    for key, label in (("ddpm", "DDPM"), ("ddim_eta0", "DDIM (eta = 0)")):
        proj = s[key] @ PROJECTIONS.T
        stats = np.array([ks_statistic(proj[:, j], mixture_cdf(PROJECTIONS[j])) for j in range(PROJECTIONS.shape[0])])
        crit = kolmogorov_critical(n, 1e-3 / PROJECTIONS.shape[0])
        out.append(compare(
            FAMILY, f"exact_denoiser_recovers_data_{key}", f"{label} with the exact denoiser samples the data "
                                                           f"distribution",
            r"\epsilon_\theta = \mathbb{E}[\epsilon|x_t] \;\Rightarrow\; x_0 \sim p_\mathrm{data}:\ "
            r"\sup_y |\hat F_{u^\top x_0}(y) - F_{u^\top x_\mathrm{data}}(y)| \le c_{0.999}",
            stats, crit, 0.0, relation="<=",
            lhs_how=f"one-sample KS statistics of {n} samples of "
                    f"diffusion.{'ddpm' if key == 'ddpm' else 'ddim'}_sample "
                    "(T = 1000) projected on e_1, e_2 and the diagonals",
            rhs_how="exact CDF of the projected mixture (numpy); KS critical value at level 1e-3 (Bonferroni)",
            note="The 1000-step discretisation error is below the test's resolution at this n.",
            plot=_plot_samples(s) if key == "ddpm" else None))
    return out


def mixture_data_predictor(z: jax.Array, lam: jax.Array) -> jax.Array:
    """The exact E[x_0 | z_lambda] of the mixture at log-SNR lambda (the data predictor of the fast samplers)."""
    mix = jax.tree.map(lambda v: jnp.asarray(v, z.dtype), {"means": MEANS, "stds": STDS, "log_w": np.log(WEIGHTS)})
    lam = jnp.full(z.shape[:1], lam, z.dtype)
    return mixture_posterior(mix, z, jax.nn.sigmoid(lam), jax.nn.sigmoid(-lam))[0]


class ExactDDPMNet(nn.Module):
    """The mixture's exact eps / x0 / v at the (fractional) timestep tau of a DDPM ``schedule``, its log-SNR
    interpolated between the integer timesteps as :meth:`gen_jax.diffusion.DiffusionModel.data_predictor` does
    (one unused parameter)."""

    parameterization: str
    schedule: diffusion.NoiseSchedule

    @nn.compact
    def __call__(self, z, t, label=None, train=False):
        self.param("unused", nn.initializers.zeros, ())
        T = self.schedule.num_timesteps
        lam = jnp.interp(jnp.asarray(t, jnp.float32), jnp.arange(1, T + 1, dtype=jnp.float32), self.schedule.log_snr)
        x0 = jax.vmap(mixture_data_predictor)(z[:, None], lam)[:, 0]
        a, s = diffusion.alpha_sigma(lam[:, None])
        eps = (z - a * x0) / s
        return {"eps": eps, "x0": x0, "v": a * eps - s * x0}[self.parameterization]


def mode_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each point assigned to its nearest mixture component (in units of the component's std): the fraction of
    points per component [K] and their spread, the std around the component's mean averaged over the axes [K]."""
    d2 = np.sum(np.square(x[:, None] - MEANS[None]), -1) / np.square(STDS)[None]
    k = np.argmin(d2, axis=1)
    frac = np.bincount(k, minlength=len(WEIGHTS)) / len(x)
    spread = np.array([np.sqrt(np.mean(np.square(x[k == j] - MEANS[j]))) if np.any(k == j) else np.inf
                       for j in range(len(WEIGHTS))])
    return frac, spread


def check_fast_samplers_recover_data(n: int, dpm_steps: int = 20, heun_steps: int = 18) -> list[Check]:
    """With the exact mixture denoiser, DPM-Solver++(2M) and its SDE variant in 20 steps and EDM's Heun sampler on
    18 levels (35 NFE) against 1000 DDPM steps, by the toy protocol: every component's share of the samples (mode
    coverage) and its within-mode spread, over the log-SNR range of the T = 1000 linear schedule."""
    sched = diffusion.NoiseSchedule.linear(T_MAIN)
    lmax, lmin = float(sched.log_snr[0]), float(sched.log_snr[-1])
    key = jax.random.key(3)
    runs = {"dpm_solver_pp_2m": (diffusion.dpm_solver_pp_2m, dpm_steps, dpm_steps),
            "dpm_solver_pp_2m_sde": (diffusion.dpm_solver_pp_2m_sde, dpm_steps, dpm_steps),
            "edm_heun": (diffusion.edm_heun, heun_steps, 2 * heun_steps - 1)}
    d_frac, d_spread = mode_stats(sampler_outputs(n)["ddpm"])
    se_frac = np.sqrt(WEIGHTS * (1 - WEIGHTS) / n)
    out = []
    for name, (fn, steps, nfe) in runs.items():
        x = np.asarray(fn(mixture_data_predictor, key, (n, 2), lmax, lmin, num_steps=steps), np.float64)
        frac, spread = mode_stats(x)
        out.append(compare(
            FAMILY, f"fast_sampler_modes_{name}", f"{name} ({nfe} network calls, exact denoiser) covers the modes "
                                                  "in their proportions",
            r"\hat w_k = w_k", frac, WEIGHTS, Z * se_frac,
            lhs_how=f"the share of {n} diffusion.{name}(num_steps={steps}) samples nearest each component",
            rhs_how="the mixture weights", note=f"Tolerance {Z:g} binomial standard errors. 1000-step DDPM: "
                                                f"{', '.join(f'{v:.3f}' for v in d_frac)}."))
        out.append(compare(
            FAMILY, f"fast_sampler_spread_{name}", f"{name} ({nfe} network calls) keeps the within-mode spread",
            r"\hat s_k = s_k", spread, STDS, 0.1 * STDS,
            lhs_how="the rms distance of those samples to their component's mean, per axis",
            rhs_how="the components' standard deviations",
            note=f"Tolerance 10 %; measured {', '.join(f'{v / t - 1:+.1%}' for v, t in zip(spread, STDS))} "
                 f"(1000-step DDPM: {', '.join(f'{v / t - 1:+.1%}' for v, t in zip(d_spread, STDS))})."))
    return out
