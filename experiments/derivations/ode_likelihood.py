"""The probability-flow ODE's log-likelihood: the instantaneous change of variables against a normalizing flow's
log-determinant, and the exact log-density of the mixture's noised marginals recovered to solver tolerance, for a
flow-matching field and for diffusion models' probability flows (VDM's continuous time, DDPM's T = 1000 steps);
Hutchinson's estimator is unbiased.

For z_t = alpha_t x + sigma_t eps and mixture data, every marginal p_t is a mixture of Gaussians in closed form
(means alpha_t mu_k, variances alpha_t^2 s_k^2 + sigma_t^2), so both ends of the ODE have exact densities.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.special

from experiments.derivations.common import Check, Z, compare, mean_and_se
from experiments.derivations.diffusion_continuous import LMAX, LMIN, MixtureDenoiser, mixture_samples
from experiments.derivations.diffusion_samplers import ExactDDPMNet
from experiments.derivations.diffusion_setting import FAMILY, MEANS, STDS, WEIGHTS
from experiments.derivations.flow_matching import MixtureVelocity
from gen_jax import diffusion, flows

RTOL = ATOL = 1e-6


def mixture_marginal_log_prob(z: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
    """log p_t(z) of alpha x + sigma eps for the mixture data x (float64)."""
    z = np.asarray(z, np.float64)
    var = alpha ** 2 * STDS ** 2 + sigma ** 2  # [K]
    d2 = np.sum(np.square(z[:, None] - alpha * MEANS[None]), -1) / var[None]
    return scipy.special.logsumexp(np.log(WEIGHTS)[None] - 0.5 * d2 - np.log(2 * np.pi * var)[None], axis=1)


def check_instantaneous_change_of_variables_is_the_flow_log_det() -> tuple[Check, Check]:
    """dz/dt = A z over t in [0, 1] is the affine flow z_1 = expm(A) z_0: the ODE's divergence integral equals
    gen_jax.flows.Invertible1x1Conv's log|det expm(A)| (= tr A) and the end points agree."""
    A = np.array([[0.3, -0.8, 0.1], [0.5, -0.2, 0.4], [-0.3, 0.2, 0.6]])
    W = scipy.linalg.expm(A)
    x = jax.random.normal(jax.random.key(0), (16, 3))
    flow = (lambda z, t: z @ jnp.asarray(A.T, z.dtype)), 0.0, 1.0
    out = diffusion.ode_log_likelihood(flow, x, rtol=RTOL, atol=ATOL)
    conv = flows.Invertible1x1Conv(lu=False)
    z, log_det = conv.apply({"params": {"kernel": jnp.asarray(W, jnp.float32)}}, x[:, None, None, :],
                            method=conv.forward)
    logdet = compare(
        FAMILY, "ode_change_of_variables_affine", "Instantaneous change of variables = a flow's log-determinant "
                                                  "(affine map)",
        r"\int_0^1 \mathrm{tr}\,\frac{\partial v}{\partial z}\,dt = \log|\det e^{A}| \quad (v = Az)",
        np.asarray(out["delta_log_prob"]), np.asarray(log_det), 1e-4,
        lhs_how="diffusion.ode_log_likelihood (diffrax Tsit5, rtol = atol = 1e-6, exact divergence): delta_log_prob",
        rhs_how="flows.Invertible1x1Conv(lu=False) with kernel expm(A): its forward log|det|",
        note=f"tr A = {np.trace(A):.6f}; float32 states.")
    ends = compare(
        FAMILY, "ode_affine_endpoint", "The ODE's end point is the flow's image", r"z_1 = e^{A} z_0",
        np.asarray(out["z1"]), np.asarray(z[:, 0, 0]), 1e-4,
        lhs_how="diffusion.ode_log_likelihood(...)['z1']", rhs_how="flows.Invertible1x1Conv(...).forward(x)")
    return logdet, ends


def _exact_ends_check(name: str, title: str, flow, x: np.ndarray, t0_coef, t1_coef) -> Check:
    exact0 = mixture_marginal_log_prob(x, *t0_coef)
    out = diffusion.ode_log_likelihood(flow, jnp.asarray(x, jnp.float32), rtol=RTOL, atol=ATOL,
                                       prior_log_prob=lambda z: mixture_marginal_log_prob(np.asarray(z), *t1_coef))
    return compare(
        FAMILY, name, title, r"\log p_{t_0}(x) = \log p_{t_1}(z_{t_1}) + \int_{t_0}^{t_1} \nabla\cdot v(z_t,t)\,dt",
        np.asarray(out["log_prob"]), exact0, 1e-4,
        lhs_how="diffusion.ode_log_likelihood (Tsit5, rtol = atol = 1e-6, exact divergence) of the model's "
                "probability_flow with the exact mixture field, the exact p_t1 as its prior",
        rhs_how="the closed-form log-density of the noised mixture at t0 (numpy, float64)",
        note=f"Tolerance 1e-4 nats (the solver's tolerance 1e-6, with margin); {int(out['num_steps'])} solver steps.")


def check_flow_matching_ode_likelihood_is_exact(n: int = 64) -> Check:
    model = diffusion.FlowMatchingModel(MixtureVelocity("linear"), (2,), path="linear")
    params, _ = model.init(jax.random.key(0))
    v, t0, t1 = model.probability_flow(params, t_min=1e-2)
    x, _ = mixture_samples(n, seed=5)
    return _exact_ends_check("ode_nll_exact_flow_matching", "Flow matching's ODE log-likelihood is the exact "
                             "log-density (mixture, linear path)", (v, t0, t1), x, (1 - t0, t0), (0.0, 1.0))


def check_vdm_probability_flow_likelihood_is_exact(n: int = 64) -> Check:
    model = diffusion.VariationalDiffusionModel(MixtureDenoiser(), diffusion.make_log_snr_schedule("linear", LMAX, LMIN),
                                                (2,))
    params, _ = model.init(jax.random.key(0))
    flow = model.probability_flow(params)
    x, _ = mixture_samples(n, seed=6)
    a = lambda lam: (float(scipy.special.expit(lam)) ** 0.5, float(scipy.special.expit(-lam)) ** 0.5)  # noqa: E731
    return _exact_ends_check("ode_nll_exact_vdm", "A diffusion model's probability-flow log-likelihood is the exact "
                             "log-density (mixture, VDM schedule)", flow, x, a(LMAX), a(LMIN))


def check_ddpm_probability_flow_likelihood_is_exact(n: int = 64, flow_fn=None) -> Check:
    """``flow_fn(model, params)`` (default: the model's ``probability_flow``) gives the field checked."""
    schedule = diffusion.NoiseSchedule.linear(1000)
    model = diffusion.DiffusionModel(ExactDDPMNet("eps", schedule), schedule, (2,))
    params, _ = model.init(jax.random.key(0))
    x, _ = mixture_samples(n, seed=7)
    lam = np.asarray(schedule.log_snr, np.float64)
    a = lambda lam: (float(scipy.special.expit(lam)) ** 0.5, float(scipy.special.expit(-lam)) ** 0.5)  # noqa: E731
    return _exact_ends_check("ode_nll_exact_ddpm", "A discrete DDPM's probability-flow log-likelihood is the exact "
                             "log-density (mixture, linear beta schedule, T = 1000)",
                             (flow_fn or type(model).probability_flow)(model, params), x,
                             a(lam[0]), a(lam[-1]))


def check_hutchinson_unbiased(num_probes: int, kind: str) -> Check:
    """The mean of eps^T (dv/dz) eps over probes equals the exact divergence of a nonlinear field."""
    z = jax.random.normal(jax.random.key(0), (8, 5), jnp.float32)
    W1, W2 = jax.random.normal(jax.random.key(1), (2, 5, 5), jnp.float32) * 0.7
    v = lambda z, t: jnp.tanh(z @ W1 + t) @ W2 + 0.3 * z ** 2  # noqa: E731
    _, exact = diffusion.divergence(v, z, jnp.float32(0.4), "exact")
    probes = (jax.random.rademacher(jax.random.key(2), (num_probes,) + z.shape, jnp.float32) if kind == "rademacher"
              else jax.random.normal(jax.random.key(2), (num_probes,) + z.shape, jnp.float32))
    per_probe = jax.vmap(lambda e: diffusion.divergence(v, z, jnp.float32(0.4), kind, e[None])[1])(probes)
    mean, se = mean_and_se(np.asarray(per_probe))
    return compare(
        FAMILY, f"hutchinson_unbiased_{kind}", f"Hutchinson's divergence estimate is unbiased ({kind} probes)",
        r"\mathbb{E}_\epsilon[\epsilon^\top \tfrac{\partial v}{\partial z}\epsilon] = \nabla\cdot v",
        mean, np.asarray(exact), Z * se,
        lhs_how=f"mean of diffusion.divergence(..., '{kind}') over {num_probes} probes, 8 points",
        rhs_how="diffusion.divergence(..., 'exact'): the trace of the Jacobian by 5 JVPs",
        note=f"Tolerance {Z:g} standard errors over the probes.")


def checks(fast: bool) -> list[Callable[[], Check | Sequence[Check]]]:
    probes = 4000 if fast else 40_000
    return [check_instantaneous_change_of_variables_is_the_flow_log_det,
            check_flow_matching_ode_likelihood_is_exact,
            check_vdm_probability_flow_likelihood_is_exact,
            check_ddpm_probability_flow_likelihood_is_exact,
            *(functools.partial(check_hutchinson_unbiased, num_probes=probes, kind=k) for k in ("rademacher", "gaussian"))]
