"""VAE: the ELBO decomposition, the Gaussian KL, the IWAE bound and the reparameterisation gradient.

Setting: a linear-Gaussian latent variable model (probabilistic PCA), where everything is known in
closed form: p(z) = N(0, I_k), p_theta(x|z) = N(W z + b, sigma^2 I_d) with k = 2, d = 4, sigma = 0.5,
so p_theta(x) = N(b, W W^T + sigma^2 I) and p_theta(z|x) = N(M^{-1} W^T (x - b), sigma^2 M^{-1}) with
M = W^T W + sigma^2 I. The decoder enters the library as ``log_likelihood(z) = Gaussian(learned_scale=
False, log_scale=log sigma).log_prob(W z + b, x)`` (``gen_jax.vae.Gaussian``); the encoder is a fixed
diagonal q_phi(z|x) = N(mu, diag(exp(log_var))) that is deliberately *not* the posterior.

Derivation (the seed): for any q, log p(x) = E_q[log p(x|z) + log p(z) - log q(z|x)] + KL(q(z|x) ||
p(z|x)), since log p(x|z) + log p(z) - log p(z|x) = log p(x) for every z (Bayes). The first term is
the ELBO L = E_q[log p(x|z)] - KL(q(z|x) || p(z)) <= log p(x).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments.derivations.common import Z, Check, compare, float64, gauss_legendre, jit, mean_and_se
from gen_jax import vae

FAMILY = "vae"
K_LATENT, D_DATA, SIGMA = 2, 4, 0.5


class LinearGaussian:
    """pPCA p(z) = N(0, I), p(x|z) = N(W z + b, sigma^2 I) with closed-form evidence and posterior."""

    def __init__(self, w: np.ndarray, b: np.ndarray, sigma: float):
        self.w, self.b, self.sigma = np.asarray(w, np.float64), np.asarray(b, np.float64), float(sigma)
        self.k = self.w.shape[1]
        m = self.w.T @ self.w + self.sigma**2 * np.eye(self.k)
        self.post_cov = self.sigma**2 * np.linalg.inv(m)  # [k, k]
        self._post_gain = np.linalg.solve(m, self.w.T)  # M^{-1} W^T, [k, d]
        self.marg_cov = self.w @ self.w.T + self.sigma**2 * np.eye(self.w.shape[0])

    # ---- closed forms (numpy, float64): the independent side
    def log_evidence(self, x: np.ndarray) -> np.ndarray:
        """log p(x) = log N(x; b, W W^T + sigma^2 I), ``x [B, d] -> [B]``."""
        return mvn_logpdf(x, self.b[None, :], self.marg_cov)

    def posterior_mean(self, x: np.ndarray) -> np.ndarray:
        """E[z|x] = M^{-1} W^T (x - b), ``[B, k]``."""
        return (x - self.b[None, :]) @ self._post_gain.T

    def log_posterior(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        """log p(z|x) for z ``[..., B, k]``, x ``[B, d]`` -> ``[..., B]``."""
        return mvn_logpdf(z, self.posterior_mean(x), self.post_cov)

    def kl_to_posterior(self, mean: np.ndarray, log_var: np.ndarray, x: np.ndarray) -> np.ndarray:
        """KL(N(mean, diag(exp(log_var))) || p(z|x)) for Gaussians, ``[B]``."""
        s_inv = np.linalg.inv(self.post_cov)
        diff = self.posterior_mean(x) - mean
        q_var = np.exp(log_var)
        return 0.5 * (np.einsum("ii,bi->b", s_inv, q_var) + np.einsum("bi,ij,bj->b", diff, s_inv, diff)
                      - self.k + np.linalg.slogdet(self.post_cov)[1] - np.sum(log_var, axis=-1))

    def elbo(self, mean: np.ndarray, log_var: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Closed-form ELBO: E_q log N(x; W z + b, sigma^2 I) - KL(q || N(0, I)), ``[B]``."""
        resid = x - self.b[None, :] - mean @ self.w.T
        trace = np.exp(log_var) @ np.sum(self.w**2, axis=0)  # tr(W diag(s^2) W^T)
        d = self.w.shape[0]
        recon = -0.5 * d * math.log(2 * math.pi * self.sigma**2) - 0.5 * (np.sum(resid**2, -1) + trace) / self.sigma**2
        kl = 0.5 * np.sum(np.exp(log_var) + mean**2 - 1.0 - log_var, axis=-1)
        return recon - kl

    def elbo_grad(self, mean: np.ndarray, log_var: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Analytic d ELBO / d mean and d ELBO / d log_var, each ``[B, k]``."""
        resid = x - self.b[None, :] - mean @ self.w.T
        g_mean = resid @ self.w / self.sigma**2 - mean
        s2 = np.exp(log_var)
        g_log_var = -0.5 * s2 * np.sum(self.w**2, axis=0)[None, :] / self.sigma**2 - 0.5 * (s2 - 1.0)
        return g_mean, g_log_var

    # ---- the library's view of the decoder
    def log_likelihood_fn(self, x: jax.Array):
        """``z [B, k] -> log p_theta(x|z) [B]`` through ``gen_jax.vae.Gaussian``."""
        lik = vae.Gaussian(learned_scale=False, log_scale=math.log(self.sigma))
        w, b = jnp.asarray(self.w), jnp.asarray(self.b)

        def log_likelihood(z):
            return lik.log_prob(z @ w.T + b[None, :], x)

        return log_likelihood


def mvn_logpdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """log N(x; mean, cov) over the last axis (numpy, float64)."""
    x = np.asarray(x, np.float64)
    diff = x - mean
    sol = np.linalg.solve(cov, np.moveaxis(diff, -1, 0).reshape(cov.shape[0], -1))
    quad = np.sum(np.moveaxis(diff, -1, 0).reshape(cov.shape[0], -1) * sol, axis=0).reshape(diff.shape[:-1])
    return -0.5 * (cov.shape[0] * math.log(2 * math.pi) + np.linalg.slogdet(cov)[1] + quad)


def make_setting(seed: int = 0, orthogonal: bool = False):
    """A pPCA model, 3 data points drawn from it, and a diagonal q(z|x) that is not the posterior.

    With ``orthogonal=True`` the columns of W are orthogonal, so p(z|x) is diagonal and q is set to it.

    Returns:
      (model, x [3, d], q_mean [3, k], q_log_var [3, k]).
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(D_DATA, K_LATENT))
    if orthogonal:
        q_, _ = np.linalg.qr(w)
        w = q_ * np.array([1.5, 0.8])[None, :]
    b = rng.normal(size=D_DATA) * 0.5
    model = LinearGaussian(w, b, SIGMA)
    z = rng.normal(size=(3, K_LATENT))
    x = z @ w.T + b[None, :] + SIGMA * rng.normal(size=(3, D_DATA))
    post_mean = model.posterior_mean(x)
    post_log_var = np.log(np.diag(model.post_cov))[None, :].repeat(3, axis=0)
    if orthogonal:
        return model, x, post_mean, post_log_var
    # Half a posterior standard deviation off, 35% wider: KL(q || p(z|x)) ~ 0.3 nats.
    offset = 0.5 * np.exp(0.5 * post_log_var) * np.array([[1.0, -1.0]])
    return model, x, post_mean + offset, post_log_var + 0.6


def _setting_jax(orthogonal: bool = False):
    model, x, mean, log_var = make_setting(orthogonal=orthogonal)
    return model, x, mean, log_var, jnp.asarray(x), jnp.asarray(mean), jnp.asarray(log_var)


# --------------------------------------------------------------------------------------- checks
@float64
def check_elbo_per_sample_identity(seed: int = 0, num_samples: int = 64) -> Check:
    """Library ELBO (MC KL) + (1/S) sum_s [log q(z_s|x) - log p(z_s|x)] == log p(x), exactly.

    On the *same* samples z_s the two estimators add up to log p(x) for any S, since
    log p(x|z) + log p(z) - log q(z|x) + log q(z|x) - log p(z|x) = log p(x) (Bayes) sample by sample.
    """
    model, x, mean, log_var, xj, mj, lvj = _setting_jax()

    @jit
    def estimate(key):
        elbo = vae.elbo(model.log_likelihood_fn(xj), mj, lvj, key, num_samples=num_samples, kl="mc").elbo
        return elbo, vae.posterior_samples(key, mj, lvj, jnp.arange(num_samples))  # the same z_s

    elbo, z = map(np.asarray, estimate(jax.random.key(seed)))
    log_q = np.sum(-0.5 * (np.log(2 * np.pi) + log_var[None] + (z - mean[None]) ** 2 / np.exp(log_var[None])), -1)
    kl_hat = np.mean(log_q - model.log_posterior(z, x), axis=0)
    rhs = model.log_evidence(x) - kl_hat
    return compare(
        FAMILY, "elbo_plus_posterior_kl_per_sample",
        "ELBO + KL(q || p(z|x)) = log p(x), sample by sample",
        r"\underbrace{\tfrac1S\textstyle\sum_s \log\frac{p_\theta(x|z_s)p(z_s)}{q_\phi(z_s|x)}}_{\text{ELBO estimate}}"
        r" + \tfrac1S\textstyle\sum_s \log\frac{q_\phi(z_s|x)}{p_\theta(z_s|x)} = \log p_\theta(x)",
        elbo, rhs, 1e-10 * (1 + np.abs(rhs)),
        lhs_how=f"vae.elbo(Gaussian decoder, kl='mc', num_samples={num_samples}).elbo for 3 data points",
        rhs_how="closed-form log p(x) minus the per-sample KL(q || p(z|x)) estimate on the same z_s "
                "(vae.posterior_samples), with the closed-form posterior (numpy)",
        note="Exact for any S (no Monte Carlo error); float64 round-off, relative tolerance 1e-10.")


@float64
def check_elbo_expectation(seed: int, num_samples: int) -> Check:
    """E_q[library ELBO] (analytic KL to the prior) + KL(q || p(z|x)) (closed form) == log p(x)."""
    model, x, mean, log_var, xj, mj, lvj = _setting_jax()

    @jit
    def estimate(k):
        terms = vae.elbo(model.log_likelihood_fn(xj), mj, lvj, k, num_samples=num_samples, kl="analytic")
        z = vae.posterior_samples(k, mj, lvj, jnp.arange(num_samples))
        recon_sd = jnp.std(jax.vmap(model.log_likelihood_fn(xj))(z), axis=0)
        return terms.elbo, recon_sd / math.sqrt(num_samples)

    elbo, se = map(np.asarray, estimate(jax.random.key(seed)))
    lhs = elbo + model.kl_to_posterior(mean, log_var, x)
    rhs = model.log_evidence(x)
    return compare(
        FAMILY, "log_evidence_decomposition", "log p(x) = ELBO + KL(q(z|x) || p(z|x)) (ELBO <= log p(x))",
        r"\log p_\theta(x) = \underbrace{\mathbb{E}_{q_\phi(z|x)}[\log p_\theta(x|z)] - "
        r"\mathrm{KL}(q_\phi(z|x)\|p(z))}_{\mathcal{L}(\theta,\phi;x)}"
        r" + \mathrm{KL}(q_\phi(z|x) \,\|\, p_\theta(z|x))",
        lhs, rhs, Z * se,
        lhs_how=f"vae.elbo(kl='analytic', num_samples={num_samples}) + closed-form KL(q || p(z|x))",
        rhs_how="closed-form log N(x; b, W W^T + sigma^2 I)",
        note=f"The reconstruction term is Monte Carlo: tolerance {Z:g} standard errors per data point "
             f"(KL(q || p(z|x)) = {float(np.max(model.kl_to_posterior(mean, log_var, x))):.3f} nats at most, "
             "so the ELBO is visibly below log p(x)).")


@float64
def check_elbo_tight_at_posterior(seed: int = 0, num_samples: int = 16) -> Check:
    """With q = p(z|x) (orthogonal W: diagonal posterior) the library's ELBO and IWAE equal log p(x)."""
    model, x, mean, log_var, xj, mj, lvj = _setting_jax(orthogonal=True)

    @jit
    def bounds(k):
        ll = model.log_likelihood_fn(xj)
        return (vae.elbo(ll, mj, lvj, k, num_samples=num_samples, kl="mc").elbo,
                vae.iwae_bound(ll, mj, lvj, k, num_samples=num_samples))

    elbo, iwae = map(np.asarray, bounds(jax.random.key(seed)))
    lhs = np.stack([elbo, iwae])
    rhs = model.log_evidence(x)[None, :]
    return compare(
        FAMILY, "elbo_tight_at_true_posterior", "The ELBO and IWAE bound are exact when q(z|x) = p(z|x)",
        r"q_\phi(z|x) = p_\theta(z|x) \;\Rightarrow\; \mathcal{L} = \mathcal{L}_K = \log p_\theta(x)\ \text{(zero "
        r"variance)}",
        lhs, rhs, 1e-10 * (1 + np.abs(rhs)),
        lhs_how=f"vae.elbo(kl='mc') and vae.iwae_bound, {num_samples} samples, q = the exact posterior",
        rhs_how="closed-form log p(x)",
        note="Every importance weight equals p(x), so any sample gives log p(x); relative tolerance 1e-10.")


@float64
def check_kl_monte_carlo(seed: int, num_samples: int, kl_fn=vae.kl_diag_normal) -> Check:
    """Library kl_diag_normal (analytic) == Monte Carlo E_q[log q(z) - log N(z; 0, I)] (numpy).

    ``kl_fn`` is the function under test (the library's by default).
    """
    mean = np.array([[0.0, 0.0, 0.0], [0.5, -1.2, 2.0], [-0.3, 0.8, 0.1]])
    log_var = np.array([[0.0, 0.0, 0.0], [-1.0, 0.7, -2.5], [1.2, -0.4, 0.3]])
    lhs = np.asarray(jit(kl_fn)(jnp.asarray(mean), jnp.asarray(log_var)))
    rng = np.random.default_rng(seed)
    z = mean[None] + np.exp(0.5 * log_var[None]) * rng.standard_normal((num_samples,) + mean.shape)
    log_q = -0.5 * (np.log(2 * np.pi) + log_var[None] + (z - mean[None]) ** 2 / np.exp(log_var[None]))
    log_p = -0.5 * (np.log(2 * np.pi) + z**2)
    rhs, se = mean_and_se(np.sum(log_q - log_p, axis=-1))
    return compare(
        FAMILY, "kl_closed_form_vs_monte_carlo", "The analytic Gaussian KL matches Monte Carlo",
        r"\tfrac12\textstyle\sum_j \left(\sigma_j^2 + \mu_j^2 - 1 - \log\sigma_j^2\right) = "
        r"\mathbb{E}_{z\sim\mathcal{N}(\mu,\sigma^2)}\left[\log\mathcal{N}(z;\mu,\sigma^2) - "
        r"\log\mathcal{N}(z;0,I)\right]",
        lhs, rhs, Z * np.maximum(se, 1e-12),
        lhs_how="vae.kl_diag_normal(mean, log_var) for 3 diagonal Gaussians in 3 dimensions (one is N(0, I))",
        rhs_how=f"Monte Carlo with {num_samples} samples, Gaussian log densities written in numpy",
        note=f"Tolerance {Z:g} standard errors (the N(0, I) case is exactly 0 on both sides).")


@float64
def check_kl_quadrature(kl_fn=vae.kl_diag_normal) -> Check:
    """Library kl_diag_normal == the sum over dimensions of 1D quadratures of q log(q/p).

    ``kl_fn`` is the function under test (the library's by default).
    """
    mean = np.array([[0.5, -1.2, 2.0], [-0.3, 0.8, 0.1]])
    log_var = np.array([[-1.0, 0.7, -2.5], [1.2, -0.4, 0.3]])
    lhs = np.asarray(jit(kl_fn)(jnp.asarray(mean), jnp.asarray(log_var)))
    u, wu = gauss_legendre(-12.0, 12.0, 48, 16)  # standardised coordinate z = mean + s u
    rhs = np.zeros(mean.shape[0])
    for j in range(mean.shape[1]):
        s = np.exp(0.5 * log_var[:, j])[:, None]
        zz = mean[:, j][:, None] + s * u[None, :]
        log_q = -0.5 * (np.log(2 * np.pi) + log_var[:, j][:, None] + u[None, :] ** 2)
        log_p = -0.5 * (np.log(2 * np.pi) + zz**2)
        rhs += np.sum(wu[None, :] * s * np.exp(log_q) * (log_q - log_p), axis=1)
    return compare(
        FAMILY, "kl_closed_form_vs_quadrature", "The analytic Gaussian KL matches quadrature",
        r"\mathrm{KL}(\mathcal{N}(\mu,\mathrm{diag}\,\sigma^2)\,\|\,\mathcal{N}(0,I)) = \textstyle\sum_j \int q_j "
        r"\log\frac{q_j}{p_j}\,dz_j",
        lhs, rhs, 1e-10,
        lhs_how="vae.kl_diag_normal", rhs_how="per-dimension Gauss-Legendre quadrature over mean +- 12 sigma (numpy)",
        note="Quadrature error ~1e-15; tolerance 1e-10.")


def _chi2_posterior(model: LinearGaussian, x, mean, log_var, num: int = 400_000, seed: int = 1) -> np.ndarray:
    """v = Var_q[p(z|x) / q(z|x)] (chi^2 divergence), the constant of the IWAE gap v / (2K) (numpy MC)."""
    rng = np.random.default_rng(seed)
    z = mean[None] + np.exp(0.5 * log_var[None]) * rng.standard_normal((num,) + mean.shape)
    log_q = np.sum(-0.5 * (np.log(2 * np.pi) + log_var[None] + (z - mean[None]) ** 2 / np.exp(log_var[None])), -1)
    ratio = np.exp(model.log_posterior(z, x) - log_q)  # w / p(x), mean 1
    return ratio.var(axis=0)


@float64
def check_iwae(seed: int, num_reps: int, ks: tuple[int, ...]) -> tuple[Check, Check]:
    """E[L_K] (library iwae_bound) is non-decreasing in K and tends to log p(x) with gap ~ v / (2K).

    Each of ``num_reps`` keys gives L_K for every K from nested samples (the library uses the first K
    samples of the same key), so consecutive differences are paired.
    """
    model, x, mean, log_var, xj, mj, lvj = _setting_jax()

    @jit
    def bounds(key):
        ll = model.log_likelihood_fn(xj)
        one = lambda k: jnp.stack([vae.iwae_bound(ll, mj, lvj, k, num_samples=kk) for kk in ks])  # noqa: E731
        return jax.vmap(one)(jax.random.split(key, num_reps))  # [R, len(ks), B]

    lk = np.asarray(bounds(jax.random.key(seed)))
    diffs = lk[:, 1:] - lk[:, :-1]  # [R, len(ks) - 1, B]
    d_mean, d_se = mean_and_se(diffs)
    monotone = compare(
        FAMILY, "iwae_monotone_in_k", "The IWAE bound is non-decreasing in K (ELBO = L_1)",
        r"\mathbb{E}[\mathcal{L}_{K'}] \ge \mathbb{E}[\mathcal{L}_K]\ (K' > K),\quad "
        r"\mathcal{L}_K = \mathbb{E}\Big[\log \tfrac1K \textstyle\sum_{k=1}^K \frac{p_\theta(x, "
        r"z_k)}{q_\phi(z_k|x)}\Big]",
        d_mean, 0.0, Z * d_se, relation=">=",
        lhs_how=f"mean over {num_reps} keys of vae.iwae_bound(K') - vae.iwae_bound(K) for consecutive K, K' in "
                f"{list(ks)}",
        rhs_how="0",
        note=f"Inequality on Monte Carlo means: a violation up to {Z:g} standard errors of the paired "
             "difference is tolerated; the worst (smallest) increment is shown.")
    l_mean, l_se = mean_and_se(lk)  # [len(ks), B]
    log_px = model.log_evidence(x)
    v = _chi2_posterior(model, x, mean, log_var)
    gap_pred = v / (2.0 * ks[-1])

    def plot(path):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        kk = np.asarray(ks, np.float64)
        for b in range(log_px.shape[0]):
            gap = log_px[b] - l_mean[:, b]
            ax.errorbar(kk, np.maximum(gap, 1e-6), yerr=l_se[:, b], fmt="o-", ms=3, label=f"x_{b}: log p(x) - E[L_K]")
            ax.loglog(kk, v[b] / (2 * kk), "k:", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("K (importance samples)")
        ax.set_ylabel("gap (nats)")
        ax.set_title("IWAE gap vs K (dotted: v / 2K)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    limit = compare(
        FAMILY, "iwae_tends_to_log_evidence", "The IWAE bound tends to log p(x), with gap ~ v / (2K)",
        r"\log p_\theta(x) - \mathbb{E}[\mathcal{L}_K] = \frac{\mathrm{Var}_q[w/p(x)]}{2K} + O(K^{-2}) \to 0",
        l_mean[-1], log_px, Z * l_se[-1] + 2.0 * gap_pred,
        lhs_how=f"mean of vae.iwae_bound(K={ks[-1]}) over {num_reps} keys",
        rhs_how="closed-form log p(x)",
        note=f"Tolerance: {Z:g} standard errors + twice the predicted gap v/(2K) = "
             f"{float(np.max(gap_pred)):.1e} (v = chi^2(p(z|x) || q) by numpy Monte Carlo).", plot=plot)
    return monotone, limit


@float64
def check_importance_sampled_log_likelihood(seed: int, num_samples: int) -> Check:
    """Library importance_sampled_log_likelihood (chunked) == closed-form log p(x)."""
    model, x, mean, log_var, xj, mj, lvj = _setting_jax()
    est = jit(lambda k: vae.importance_sampled_log_likelihood(
        model.log_likelihood_fn(xj), mj, lvj, k, num_samples=num_samples, chunk_size=1000))(jax.random.key(seed))
    v = _chi2_posterior(model, x, mean, log_var)
    tol = Z * np.sqrt(v / num_samples) + v / num_samples
    return compare(
        FAMILY, "importance_sampled_log_likelihood", "The importance-sampled estimate recovers log p(x)",
        r"\log \tfrac1K \textstyle\sum_k \frac{p_\theta(x|z_k) p(z_k)}{q_\phi(z_k|x)} \to \log p_\theta(x),\quad z_k "
        r"\sim q_\phi(z|x)",
        np.asarray(est), model.log_evidence(x), tol,
        lhs_how=f"vae.importance_sampled_log_likelihood(K={num_samples}, chunk_size=1000)",
        rhs_how="closed-form log p(x)",
        note=f"Tolerance: {Z:g} x sqrt(v/K) (delta-method standard error) + v/K (twice the bias), "
             "v = chi^2(p(z|x) || q) by numpy Monte Carlo.")


@float64
def check_reparameterisation_gradient(seed: int, num_reps: int, num_samples: int) -> Check:
    """jax.grad of the library's reparameterised ELBO w.r.t. (mean, log_var) == the analytic gradient."""
    model, x, mean, log_var, xj, mj, lvj = _setting_jax()

    def objective(m, lv, k):
        return jnp.sum(vae.elbo(model.log_likelihood_fn(xj), m, lv, k, num_samples=num_samples).elbo)

    grads = jit(lambda key: jax.vmap(jax.grad(objective, argnums=(0, 1)), (None, None, 0))(
        mj, lvj, jax.random.split(key, num_reps)))(jax.random.key(seed))
    est = np.concatenate([np.asarray(g) for g in grads], axis=-1)  # [R, B, 2k]
    g_mean, g_se = mean_and_se(est)
    rhs = np.concatenate(model.elbo_grad(mean, log_var, x), axis=-1)
    return compare(
        FAMILY, "reparameterisation_gradient", "The reparameterised ELBO gradient is unbiased",
        r"\nabla_{\mu,\log\sigma^2}\, \mathbb{E}_{\epsilon}\big[\log p_\theta(x \mid \mu + \sigma\epsilon)\big] - "
        r"\nabla\mathrm{KL}"
        r" = \nabla_{\mu,\log\sigma^2}\, \mathcal{L}_\text{closed form}",
        g_mean, rhs, Z * g_se,
        lhs_how=f"jax.grad of vae.elbo (z = mean + exp(log_var/2) eps) with {num_samples} samples, "
                f"averaged over {num_reps} keys",
        rhs_how="analytic gradient of the closed-form linear-Gaussian ELBO (numpy)",
        note=f"12 gradient components (3 points x (2 means + 2 log-variances)); tolerance {Z:g} standard "
             "errors each.")


# ------------------------------------------------------------------------------------------ run
def checks(fast: bool) -> list[Callable[[], Check | Sequence[Check]]]:
    """Every VAE check, as thunks; ``fast`` shrinks the Monte Carlo sizes."""
    iwae_ks = (1, 4, 16, 64) if fast else (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
    return [
        functools.partial(check_elbo_per_sample_identity, 0),
        functools.partial(check_elbo_expectation, 1, num_samples=200_000 if fast else 2_000_000),
        functools.partial(check_elbo_tight_at_posterior, 2),
        functools.partial(check_kl_monte_carlo, 3, num_samples=200_000 if fast else 2_000_000),
        check_kl_quadrature,
        functools.partial(check_iwae, 4, num_reps=1000 if fast else 4000, ks=iwae_ks),
        functools.partial(check_importance_sampled_log_likelihood, 5, num_samples=10_000 if fast else 200_000),
        functools.partial(check_reparameterisation_gradient, 6, num_reps=200 if fast else 1000, num_samples=64),
    ]
