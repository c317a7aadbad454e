"""Diffusion: the forward marginal, the Gaussian posterior, the bound's decomposition, the samplers.

The seed's forward step x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps composes to
q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I); Bayes' rule gives the Gaussian posterior
q(x_{t-1} | x_t, x_0); the variational bound on -log p_theta(x_0) decomposes into L_T + sum L_{t-1} + L_0
with each L_{t-1} a weighted eps-MSE; DDIM with eta = 1 is DDPM; and with the exact denoiser of a
Gaussian mixture the samplers return that mixture.

Setting: the linear schedule of Ho et al. (T = 1000, beta from 1e-4 to 0.02) as the library builds it
(``NoiseSchedule.linear``; its arrays are stored in float32 and cast to float64 here, except for the
samplers, which keep float32 state), a 2D mixture
of 4 Gaussians as data, and its exact noise predictor
eps*(x_t, t) = (x_t - sqrt(alpha_bar_t) E[x_0 | x_t]) / sqrt(1 - alpha_bar_t) (closed form for a
mixture). The bound checks use a deliberately imperfect predictor 0.9 eps* + 0.05 so that every term
is non-trivial.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from experiments.derivations.common import (
    Check,
    Z,
    compare,
    float64,
    jit,
    kolmogorov_critical,
    ks_statistic,
    mean_and_se,
)
from experiments.derivations import diffusion_continuous, flow_matching, ode_likelihood
from experiments.derivations.diffusion_samplers import (check_ddim_eta1_is_ddpm, check_exact_denoiser_recovers_data,
                                                       check_fast_samplers_recover_data)
from experiments.derivations.diffusion_setting import (
    FAMILY,
    SCHEDULE_F32_TOL,
    data_points,
    denoiser_params,
    gmm_eps,
    independent_coefficients,
    schedule,
)
from gen_jax import diffusion


# ------------------------------------------------------------------------------- forward process
@float64
def check_composition_exact(x0: float = 1.3, forward_fn=diffusion.forward_step) -> Check:
    """Propagating mean and variance through the library's one-step forward map gives q(x_t|x_0).

    forward_step is affine in (x_{t-1}, eps): its coefficients are read off by evaluating it at
    (1, 0) and (0, 1), and m_t = a_t m_{t-1}, v_t = a_t^2 v_{t-1} + b_t^2 propagated from (x_0, 0).
    ``forward_fn`` is the function under test (the library's by default).
    """
    sched = schedule()
    T = sched.num_timesteps

    @jit
    def propagate(sched):
        def step(carry, t):
            m, v = carry
            one, zero = jnp.ones(()), jnp.zeros(())
            a = forward_fn(sched, one, t, zero)  # coefficient of x_{t-1}
            b = forward_fn(sched, zero, t, one)  # coefficient of eps
            m, v = a * m, a * a * v + b * b
            return (m, v), (m, v)

        _, (m, v) = jax.lax.scan(step, (jnp.asarray(x0, jnp.float64), jnp.zeros(())), jnp.arange(1, T + 1))
        return m, v

    m, v = map(np.asarray, propagate(sched))
    c = independent_coefficients(sched)
    lhs = np.concatenate([m, v])
    rhs = np.concatenate([np.sqrt(c["abar"]) * x0, 1.0 - c["abar"]])
    return compare(
        FAMILY, "forward_composition_exact", "Composing the seed's one-step forward process gives q(x_t | x_0)",
        r"x_t = \sqrt{1-\beta_t}\,x_{t-1} + \sqrt{\beta_t}\,\epsilon \;\Rightarrow\; "
        r"q(x_t|x_0) = \mathcal{N}\big(\sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\big),\ \bar\alpha_t = "
        r"\textstyle\prod_{s\le t}(1-\beta_s)",
        lhs, rhs, 1e-12,
        lhs_how="mean and variance propagated through diffusion.forward_step for t = 1..1000 (lax.scan)",
        rhs_how="sqrt(alpha_bar_t) x_0 and 1 - alpha_bar_t with alpha_bar_t = cumprod(1 - beta_t) (numpy)",
        note="Exact (linear Gaussian algebra), all 1000 timesteps, mean and variance; float64 round-off, "
             "tolerance 1e-12.")


@float64
def check_closed_form_coefficients() -> Check:
    """The library's q(x_t|x_0) (q_mean_variance) matches alpha_bar computed from the paper's betas."""
    sched = schedule()
    T = sched.num_timesteps
    x0 = np.array([-1.5, 0.3, 2.0])
    t = np.arange(1, T + 1)
    mean, var = jit(lambda s, x, t: diffusion.q_mean_variance(s, x, t))(
        sched, jnp.broadcast_to(jnp.asarray(x0)[None], (T, 3)), jnp.asarray(t))
    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))  # Ho et al.'s schedule, float64 throughout
    lhs = np.concatenate([np.asarray(mean).reshape(-1), np.broadcast_to(np.asarray(var), (T, 3)).reshape(-1)])
    rhs = np.concatenate([(np.sqrt(abar)[:, None] * x0[None]).reshape(-1), np.repeat(1.0 - abar, 3)])
    return compare(
        FAMILY, "closed_form_marginal", "The library's closed-form q(x_t | x_0) has the right coefficients",
        r"\texttt{q\_mean\_variance}(x_0, t) = \left(\sqrt{\bar\alpha_t}\,x_0,\ 1-\bar\alpha_t\right),\ \beta_t = "
        r"10^{-4} + \tfrac{t-1}{T-1}(0.02 - 10^{-4})",
        lhs, rhs, np.maximum(SCHEDULE_F32_TOL * np.abs(rhs), 1e-7),
        lhs_how="diffusion.q_mean_variance(NoiseSchedule.linear(1000), x_0, t), t = 1..1000",
        rhs_how="cumprod(1 - linspace(1e-4, 0.02, 1000)) in float64 (numpy)",
        note="The schedule stores float32: relative tolerance 1e-6, but at least 1e-7 absolute, because "
             "q_mean_variance forms the variance as 1 - alpha_bar_t from the float32 alpha_bar_t (an absolute "
             "error of one float32 ulp at 1, ~6e-8; relative ~3e-4 at t = 1, 2).")


MC_TIMES = (1, 10, 100, 300, 1000)


def composed_samples(num_paths: int, x0: np.ndarray, seed: int = 0) -> np.ndarray:
    """``num_paths`` runs of the library's forward_step from x_0 [D]; x_t at :data:`MC_TIMES`, [len, N, D]."""
    sched = schedule()
    T = sched.num_timesteps
    keep = np.zeros(T + 1, bool)
    keep[list(MC_TIMES)] = True

    @functools.partial(jit, optimize=True)  # run-time bound: num_paths x D x 1000 normals
    def run(sched, key, x0):
        def step(x, inp):
            t, k = inp
            eps = jax.random.normal(k, x.shape, jnp.float32).astype(x.dtype)  # float32 draws, float64 chain
            x = diffusion.forward_step(sched, x, t, eps)
            return x, x

        ts = jnp.arange(1, T + 1)
        keys = jax.random.split(key, T)
        _, xs = jax.lax.scan(step, jnp.broadcast_to(x0[None], (num_paths,) + x0.shape), (ts, keys))
        return xs[jnp.asarray(np.asarray(MC_TIMES) - 1)]

    return np.asarray(run(sched, jax.random.key(seed), jnp.asarray(x0, jnp.float64)))


@float64
def check_composition_monte_carlo(num_paths: int) -> tuple[Check, Check]:
    """Monte Carlo of the composed library steps: moments and the distribution match q(x_t | x_0)."""
    x0 = np.array([-1.5, 0.0, 0.8, 2.0])
    xs = composed_samples(num_paths, x0)  # [len(MC_TIMES), N, D]
    c = independent_coefficients(schedule())
    abar = c["abar"][np.asarray(MC_TIMES) - 1][:, None]  # [len, 1]
    mean_true, var_true = np.sqrt(abar) * x0[None], np.broadcast_to(1.0 - abar, (len(MC_TIMES), x0.shape[0]))
    mean_mc, mean_se = mean_and_se(xs, axis=1)
    var_mc = xs.var(axis=1, ddof=1)
    var_se = var_true * math.sqrt(2.0 / (num_paths - 1))  # SE of a Gaussian sample variance
    moments = compare(
        FAMILY, "forward_composition_monte_carlo", "Sampled chains of forward steps have q(x_t | x_0)'s moments",
        r"\mathbb{E}[x_t|x_0] = \sqrt{\bar\alpha_t}\,x_0,\quad \mathrm{Var}[x_t|x_0] = 1 - \bar\alpha_t",
        np.concatenate([mean_mc.reshape(-1), var_mc.reshape(-1)]),
        np.concatenate([mean_true.reshape(-1), var_true.reshape(-1)]),
        Z * np.concatenate([mean_se.reshape(-1), var_se.reshape(-1)]),
        lhs_how=f"{num_paths} chains of diffusion.forward_step with fresh eps, t = 1..1000; sample mean and "
                f"variance at t in {list(MC_TIMES)} for 4 values of x_0",
        rhs_how="closed form with alpha_bar_t = cumprod(1 - beta_t) (numpy)",
        note=f"Monte Carlo: tolerance {Z:g} standard errors per moment (40 moments).")
    ks = np.array([[ks_statistic(xs[i, :, d], lambda y, m=mean_true[i, d], s=math.sqrt(var_true[i, d]):
                                 scipy.special.ndtr((y - m) / s)) for d in range(x0.shape[0])]
                   for i in range(len(MC_TIMES))])
    crit = kolmogorov_critical(num_paths, 1e-3 / ks.size)

    def plot(path):
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(MC_TIMES), figsize=(3.0 * len(MC_TIMES), 3.0), sharey=False)
        for i, ax in enumerate(axes):
            d = 3  # x_0 = 2.0
            ax.hist(xs[i, :, d], bins=60, density=True, color="C0", alpha=0.6, label="forward_step chains")
            y = np.linspace(xs[i, :, d].min(), xs[i, :, d].max(), 300)
            s = math.sqrt(var_true[i, d])
            ax.plot(y, np.exp(-0.5 * ((y - mean_true[i, d]) / s) ** 2) / (s * math.sqrt(2 * math.pi)), "k-",
                    label=r"$q(x_t|x_0)$")
            ax.set_title(f"t = {MC_TIMES[i]}")
        axes[0].legend(fontsize=7)
        fig.suptitle("x_0 = 2: composed forward steps vs the closed-form marginal", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    dist = compare(
        FAMILY, "forward_composition_distribution", "Sampled chains of forward steps are distributed as q(x_t | x_0)",
        r"\sup_y \left|\hat F_{x_t}(y) - \Phi\!\left(\frac{y - "
        r"\sqrt{\bar\alpha_t}x_0}{\sqrt{1-\bar\alpha_t}}\right)\right| \le c_{0.999}",
        ks, crit, 0.0, relation="<=",
        lhs_how=f"Kolmogorov-Smirnov statistic of the {num_paths} chains at each t in {list(MC_TIMES)}, 4 values of "
                f"x_0",
        rhs_how="closed-form Gaussian CDF; critical value of the KS test at level 1e-3 (Bonferroni over 20 tests)",
        note="Tests the whole distribution, not only two moments.", plot=plot)
    return moments, dist


# ----------------------------------------------------------------------------------- posterior
@float64
def check_posterior(seed: int = 0, posterior_fn=diffusion.q_posterior) -> tuple[Check, Check]:
    """Library q_posterior == the product of q(x_t|x_{t-1}) and q(x_{t-1}|x_0), normalised (Bayes).

    ``posterior_fn`` is the function under test (the library's by default).
    """
    sched = schedule()
    T = sched.num_timesteps
    rng = np.random.default_rng(seed)
    t = np.arange(2, T + 1)
    x0 = rng.normal(size=(t.shape[0], 3))
    xt = rng.normal(size=(t.shape[0], 3)) * 1.5
    mean, var, _ = map(np.asarray, jit(lambda s, a, b, t: posterior_fn(s, a, b, t))(
        sched, jnp.asarray(x0), jnp.asarray(xt), jnp.asarray(t)))
    c = independent_coefficients(sched)
    a_t, b_t, ab_prev = c["alphas"][t - 1][:, None], c["betas"][t - 1][:, None], c["abar_prev"][t - 1][:, None]
    # x_{t-1} appears in N(x_t; sqrt(a_t) x_{t-1}, b_t) and N(x_{t-1}; sqrt(ab_prev) x_0, 1 - ab_prev):
    precision = a_t / b_t + 1.0 / (1.0 - ab_prev)
    mean_bayes = (np.sqrt(a_t) * xt / b_t + np.sqrt(ab_prev) * x0 / (1.0 - ab_prev)) / precision
    var_bayes = np.broadcast_to(1.0 / precision, mean_bayes.shape)
    formula_mean = (r"\tilde\mu_t = \frac{\sqrt{\alpha_t}\,x_t/\beta_t + "
                    r"\sqrt{\bar\alpha_{t-1}}\,x_0/(1-\bar\alpha_{t-1})}"
                    r"{\alpha_t/\beta_t + 1/(1-\bar\alpha_{t-1})} = "
                    r"\frac{\beta_t\sqrt{\bar\alpha_{t-1}}}{1-\bar\alpha_t}x_0 + "
                    r"\frac{(1-\bar\alpha_{t-1})\sqrt{\alpha_t}}{1-\bar\alpha_t}x_t")
    mean_check = compare(
        FAMILY, "posterior_mean", "The posterior mean of q(x_{t-1} | x_t, x_0) is Bayes' rule",
        r"q(x_{t-1}|x_t,x_0) \propto q(x_t|x_{t-1})\,q(x_{t-1}|x_0):\quad " + formula_mean,
        mean, mean_bayes, SCHEDULE_F32_TOL * (1.0 + np.abs(mean_bayes)),
        lhs_how="diffusion.q_posterior(schedule, x_0, x_t, t)[0] for t = 2..1000, random x_0, x_t in 3 dims",
        rhs_how="precision-weighted mean of the two Gaussian factors in x_{t-1} (numpy, from the betas)",
        note="Float32-stored coefficients: relative tolerance 1e-6.")
    var_check = compare(
        FAMILY, "posterior_variance", "The posterior variance of q(x_{t-1} | x_t, x_0) is Bayes' rule",
        r"\tilde\beta_t = \left(\frac{\alpha_t}{\beta_t} + \frac{1}{1-\bar\alpha_{t-1}}\right)^{-1} = "
        r"\frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t",
        np.broadcast_to(var, mean.shape), var_bayes, SCHEDULE_F32_TOL * var_bayes,
        lhs_how="diffusion.q_posterior(...)[1], t = 2..1000",
        rhs_how="inverse of the summed precisions (numpy)",
        note="Relative tolerance 1e-6.")
    return mean_check, var_check


# ------------------------------------------------------------------------------------ the bound
def bound_inputs(sched: diffusion.NoiseSchedule, x0: np.ndarray, seed: int, gain: float, shift: float) -> dict:
    """The library's variational bound at x_0 and, on the same noise, the pieces to recompute it.

    ``variational_bound`` draws eps_t = normal(fold_in(rng, t), x_0.shape) (float32) for every t; the
    same eps_t are drawn here, x_t is formed with the independent alpha_bar, and the denoiser is
    evaluated there. Also returns the library's 'vlb'-weighted ``denoising_loss`` on that noise.
    """
    T = sched.num_timesteps
    c = independent_coefficients(sched)
    params = denoiser_params(sched, gain, shift)
    t_all = jnp.arange(1, T + 1)

    @jit
    def run(sched, params, x0, abar):
        rng = jax.random.key(seed)
        vb = diffusion.variational_bound(gmm_eps, params, sched, x0, rng, variance="large", t_chunk=50)
        x = x0.astype(jnp.float32)
        eps = jax.vmap(lambda t: jax.random.normal(jax.random.fold_in(rng, t), x.shape, x.dtype))(t_all)  # [T, B, D]
        eps = eps.astype(jnp.float64)
        x0_64 = x.astype(jnp.float64)
        xt = jnp.sqrt(abar)[:, None, None] * x0_64[None] + jnp.sqrt(1.0 - abar)[:, None, None] * eps
        tt = jnp.broadcast_to(t_all[:, None], xt.shape[:2])
        flat = lambda a: a.reshape((-1,) + a.shape[2:])  # noqa: E731
        eps_hat = gmm_eps(params, flat(xt), flat(tt)).reshape(xt.shape)
        weighted, _ = diffusion.denoising_loss(sched, flat(eps_hat), flat(jnp.broadcast_to(x0_64[None], xt.shape)),
                                               flat(eps), flat(tt), weighting="vlb", variance="large")
        return {"vb": vb, "eps": eps, "xt": xt, "eps_hat": eps_hat, "vlb_loss": weighted.reshape(xt.shape[:2])}

    out = run(sched, params, jnp.asarray(x0), jnp.asarray(c["abar"]))
    return jax.tree.map(np.asarray, out)


def independent_bound(sched: diffusion.NoiseSchedule, x0: np.ndarray, inputs: dict) -> dict[str, np.ndarray]:
    """L_T, L_{t-1} (t >= 2), L_0 and the weighted eps-MSE, from the betas and Bayes' rule (numpy).

    Reverse variances are the library's 'large' choice: sigma_t^2 = beta_t for t >= 2 and
    sigma_1^2 = beta_tilde_2 (Ho et al.'s code), a property of the model p_theta, not of the bound.
    """
    c = independent_coefficients(sched)
    T, d = c["betas"].shape[0], x0.shape[1]
    b, a, ab, ab_prev = (c[k][:, None, None] for k in ("betas", "alphas", "abar", "abar_prev"))
    eps, xt, eps_hat = inputs["eps"], inputs["xt"], inputs["eps_hat"]  # [T, B, D]
    x0b = x0[None]
    mu_theta = (xt - b / np.sqrt(1.0 - ab) * eps_hat) / np.sqrt(a)  # Ho et al. eq. 11
    precision = a[1:] / b[1:] + 1.0 / (1.0 - ab_prev[1:])
    mu_tilde = (np.sqrt(a[1:]) * xt[1:] / b[1:] + np.sqrt(ab_prev[1:]) * x0b / (1.0 - ab_prev[1:])) / precision
    beta_tilde = 1.0 / precision  # [T-1, 1, 1]
    sigma2 = b[1:]
    kl = np.sum(0.5 * np.log(sigma2 / beta_tilde) + (beta_tilde + (mu_tilde - mu_theta[1:]) ** 2) / (2 * sigma2) - 0.5,
                axis=-1)  # [T-1, B]
    sigma2_1 = float(beta_tilde[0, 0, 0])  # beta_tilde_2
    decoder = -np.sum(-0.5 * (np.log(2 * np.pi * sigma2_1) + (x0b[0] - mu_theta[0]) ** 2 / sigma2_1), axis=-1)
    prior = np.sum(0.5 * (ab[-1, 0] * x0**2 + (1.0 - ab[-1, 0]) - 1.0 - np.log(1.0 - ab[-1, 0])), axis=-1)
    w = b[1:] ** 2 / (2 * sigma2 * a[1:] * (1.0 - ab[1:]))
    weighted_mse = np.sum(w * (eps[1:] - eps_hat[1:]) ** 2, axis=-1)  # [T-1, B]
    const = 0.5 * d * (np.log(sigma2 / beta_tilde) + beta_tilde / sigma2 - 1.0)[:, :, 0]  # C_t, [T-1, 1]
    return {"kl": kl, "decoder": decoder, "prior": prior, "weighted_mse": weighted_mse, "const": const,
            "total": prior + decoder + kl.sum(axis=0), "T": T}


@functools.lru_cache(maxsize=None)
def _bound_setting(seed: int = 0, gain: float = 0.9, shift: float = 0.05):
    sched = schedule()
    x0 = data_points()
    inputs = bound_inputs(sched, x0, seed, gain, shift)
    return x0, inputs, independent_bound(sched, x0, inputs)


def _plot_terms(lib_terms: np.ndarray, ind_terms: np.ndarray):
    def plot(path):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4))
        t = np.arange(1, lib_terms.shape[1] + 1)
        ax.semilogy(t, lib_terms[0], "C0-", lw=2, label=r"library variational_bound: $L_{t-1}$")
        ax.semilogy(t[1:], ind_terms[:, 0], "k:", lw=2, label=r"Bayes posterior KL (numpy)")
        ax.set_xlabel("t")
        ax.set_ylabel("nats")
        ax.set_title("Bound terms of one data point; t = 1 is the decoder L_0", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    return plot


@float64
def check_bound_terms() -> tuple[Check, Check]:
    """Every term of the library's bound, and their sum, equal an independent evaluation."""
    x0, inputs, ind = _bound_setting()
    vb = inputs["vb"]
    lib = np.concatenate([vb["prior_nats"][None], vb["terms_nats"].T])  # [1 + T, B]: L_T, L_0, L_1, ..., L_{T-1}
    rhs = np.concatenate([ind["prior"][None], ind["decoder"][None], ind["kl"]])
    terms = compare(
        FAMILY, "bound_terms", "Each term of the library's bound equals its definition",
        r"L_T = \mathrm{KL}(q(x_T|x_0)\|\mathcal{N}(0,I)),\ L_{t-1} = "
        r"\mathrm{KL}(q(x_{t-1}|x_t,x_0)\|p_\theta(x_{t-1}|x_t)),\ "
        r"L_0 = -\log p_\theta(x_0|x_1)",
        lib, rhs, 1e-5 * (1 + np.abs(rhs)),
        lhs_how="diffusion.variational_bound(...)['prior_nats'] and ['terms_nats'] (4 points x 1000 terms), "
                "denoiser 0.9 eps* + 0.05, variance='large'",
        rhs_how="numpy: Bayes posterior (precision-weighted), mu_theta = (x_t - beta_t eps_theta / sqrt(1 - "
                "alpha_bar_t)) / sqrt(alpha_t), Gaussian KL and log-density formulas, on the same eps_t",
        note="The library works in float32 data with a float32-stored schedule: relative tolerance 1e-5.",
        plot=_plot_terms(vb["terms_nats"], ind["kl"]))
    total = compare(
        FAMILY, "bound_decomposition_sum", "The library's bound is L_T + sum_t L_{t-1} + L_0",
        r"-\log p_\theta(x_0) \le \mathbb{E}_q\!\left[\log\frac{q(x_{1:T}|x_0)}{p_\theta(x_{0:T})}\right] = "
        r"L_T + \textstyle\sum_{t=2}^{T} L_{t-1} + L_0",
        vb["nll_nats"], ind["total"], 1e-5 * (1 + np.abs(ind["total"])),
        lhs_how="diffusion.variational_bound(...)['nll_nats']",
        rhs_how="sum of the independently computed L_T, L_{t-1} (t = 2..1000) and L_0",
        note="Relative tolerance 1e-5 (float32 data and schedule inside the library).")
    return terms, total


@float64
def check_weighted_eps_mse() -> tuple[Check, Check]:
    """L_{t-1} = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)) ||eps - eps_theta||^2 + C_t, and the
    library's 'vlb' weighting is exactly that weight (per-dimension mean times D, per-term times T)."""
    x0, inputs, ind = _bound_setting()
    T, d = ind["T"], x0.shape[1]
    lib_kl = inputs["vb"]["terms_nats"].T[1:]  # [T-1, B], t = 2..T
    rhs = ind["weighted_mse"] + ind["const"]
    kl_check = compare(
        FAMILY, "bound_term_is_weighted_eps_mse", "Each L_{t-1} is a weighted eps-MSE (plus a constant)",
        r"L_{t-1} = \frac{\beta_t^2}{2\sigma_t^2\alpha_t(1-\bar\alpha_t)}\,\|\epsilon - \epsilon_\theta(x_t, t)\|^2 "
        r"+ C_t,\quad "
        r"C_t = \tfrac{D}{2}\left(\log\tfrac{\sigma_t^2}{\tilde\beta_t} + \tfrac{\tilde\beta_t}{\sigma_t^2} - 1\right)",
        lib_kl, rhs, 1e-5 * (1 + np.abs(rhs)),
        lhs_how="diffusion.variational_bound(...)['terms_nats'][:, 1:] (the KL terms, t = 2..1000)",
        rhs_how="numpy: the weight formula times ||eps_t - eps_theta(x_t, t)||^2 on the same eps_t, plus C_t "
                "(sigma_t^2 = beta_t, so C_t > 0; C_t = 0 when sigma_t^2 = beta_tilde_t)",
        note="Relative tolerance 1e-5.")
    lib_vlb = inputs["vlb_loss"][1:] * d / T  # per-dimension mean * D, and the loss is T x one term
    weight_check = compare(
        FAMILY, "vlb_weighting_is_the_bound", "The library's 'vlb' loss weighting is the bound's eps weight",
        r"\tfrac{D}{T}\,\texttt{denoising\_loss}(\texttt{weighting='vlb'}) = "
        r"\frac{\beta_t^2}{2\sigma_t^2\alpha_t(1-\bar\alpha_t)}\,\|\epsilon - \epsilon_\theta\|^2 = L_{t-1} - C_t",
        lib_vlb, ind["weighted_mse"], 1e-5 * (1 + np.abs(ind["weighted_mse"])),
        lhs_how="diffusion.denoising_loss(..., weighting='vlb', variance='large') x D / T on the same (x_0, eps_t, t)",
        rhs_how="the weight formula times ||eps_t - eps_theta||^2 (numpy)",
        note="Relative tolerance 1e-5.")
    return kl_check, weight_check


@float64
def check_bound_is_expected_path_log_ratio(num_paths: int, num_keys: int, seed: int = 1) -> Check:
    """E_q[log q(x_{1:T}|x_0) - log p_theta(x_{0:T})] over whole forward paths == E[library bound].

    Uses a short schedule (T = 50, beta from 1e-3 to 0.2) so that the path estimator's variance is
    small. The path side evaluates the seed's one-step kernels and the model's reverse kernels with
    Gaussian log-densities written here; the library side averages ``nll_nats`` over keys.
    """
    sched = schedule(50, 1e-3, 0.2)
    T = sched.num_timesteps
    c = independent_coefficients(sched)
    x0 = data_points()
    params = denoiser_params(sched, 0.9, 0.05)
    log_var = np.asarray(sched.reverse_log_variance("large"))  # the model's sigma_t^2 (its definition)

    def log_normal(x, m, v):
        return jnp.sum(-0.5 * (jnp.log(2 * jnp.pi * v) + jnp.square(x - m) / v), axis=-1)

    @jit
    def run(sched, params, x0):
        key = jax.random.key(seed)
        k_path, k_lib = jax.random.split(key)
        betas, alphas, abar = (jnp.asarray(c[k]) for k in ("betas", "alphas", "abar"))
        sigma2 = jnp.exp(jnp.asarray(log_var))
        x_start = jnp.broadcast_to(x0[:, None, :], (x0.shape[0], num_paths, x0.shape[1])).reshape(-1, x0.shape[1])

        def forward(x_prev, inp):
            i, k = inp
            x = jnp.sqrt(alphas[i]) * x_prev + jnp.sqrt(betas[i]) * jax.random.normal(k, x_prev.shape)
            log_q = log_normal(x, jnp.sqrt(alphas[i]) * x_prev, betas[i])
            t = jnp.full(x.shape[:1], i + 1)
            eps_hat = gmm_eps(params, x, t)
            mu = (x - betas[i] / jnp.sqrt(1.0 - abar[i]) * eps_hat) / jnp.sqrt(alphas[i])
            log_p_prev = log_normal(x_prev, mu, sigma2[i])  # log p_theta(x_{t-1} | x_t)
            return x, log_q - log_p_prev

        x_T, ratios = jax.lax.scan(forward, x_start, (jnp.arange(T), jax.random.split(k_path, T)))
        log_ratio = jnp.sum(ratios, axis=0) - log_normal(x_T, 0.0, 1.0)  # [B * N]
        vb = jax.vmap(lambda k: diffusion.variational_bound(gmm_eps, params, sched, x0, k, variance="large",
                                                            t_chunk=T)["nll_nats"])(jax.random.split(k_lib, num_keys))
        return log_ratio.reshape(x0.shape[0], num_paths), vb  # [B, N], [R, B]

    paths, vb = map(np.asarray, run(sched, params, jnp.asarray(x0)))
    p_mean, p_se = mean_and_se(paths, axis=1)
    v_mean, v_se = mean_and_se(vb, axis=0)
    return compare(
        FAMILY, "bound_is_expected_path_log_ratio", "The bound's terms add up to the expected log ratio of whole paths",
        r"\mathbb{E}_{q(x_{1:T}|x_0)}\!\left[\log q(x_T|x_{T-1})\cdots q(x_1|x_0) - \log "
        r"p(x_T)\,p_\theta(x_{T-1}|x_T)\cdots p_\theta(x_0|x_1)\right]"
        r" = L_T + \textstyle\sum_{t\ge2} L_{t-1} + L_0",
        v_mean, p_mean, Z * np.sqrt(v_se**2 + p_se**2),
        lhs_how=f"mean over {num_keys} keys of diffusion.variational_bound(...)['nll_nats'] (T = 50)",
        rhs_how=f"{num_paths} forward paths per data point through the seed's one-step kernel; log densities of "
                "q and p_theta summed along each path (Gaussian log-densities written here)",
        note=f"Both sides Monte Carlo: tolerance {Z:g} combined standard errors per data point.")


# ------------------------------------------------------------------------------------------ run
def checks(fast: bool) -> list[Callable[[], Check | Sequence[Check]]]:
    """Every diffusion check, as thunks; ``fast`` shrinks the Monte Carlo and sample sizes."""
    n = 2000 if fast else 10_000
    return [
        check_composition_exact,
        check_closed_form_coefficients,
        functools.partial(check_composition_monte_carlo, num_paths=5000 if fast else 200_000),
        check_posterior,
        check_bound_terms,
        check_weighted_eps_mse,
        functools.partial(check_bound_is_expected_path_log_ratio, num_paths=2000 if fast else 100_000,
                          num_keys=1000 if fast else 40_000),
        functools.partial(check_ddim_eta1_is_ddpm, n=n),
        functools.partial(check_exact_denoiser_recovers_data, n=n),
        functools.partial(check_fast_samplers_recover_data, n=n),
        *diffusion_continuous.checks(fast),
        *flow_matching.checks(fast),
        *ode_likelihood.checks(fast),
    ]
