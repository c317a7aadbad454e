"""Flow matching: the conditional loss has the marginal loss's gradient, and the ODE of the exact marginal
velocity carries N(0, I) to the data.

Setting: the 2-D mixture of :mod:`experiments.derivations.diffusion_setting`. For z_t = alpha_t x + sigma_t eps the
marginal velocity is u_t(z) = alpha'_t E[x | z_t = z] + sigma'_t E[eps | z_t = z], with E[eps | z_t] the mixture's
exact posterior mean (``diffusion_setting.mixture_posterior``; any alpha_t, sigma_t).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.derivations.common import Check, Z, compare, kolmogorov_critical, ks_statistic, mean_and_se
from experiments.derivations.diffusion_setting import (FAMILY, MEANS, PROJECTIONS, STDS, WEIGHTS, mixture_cdf,
                                                       mixture_posterior)
from gen_jax import diffusion

_MIX = {"means": MEANS, "stds": STDS, "log_w": np.log(WEIGHTS)}


def marginal_velocity(model: diffusion.FlowMatchingModel, z: jax.Array, t: jax.Array) -> jax.Array:
    """u_t(z) of the mixture data for the model's path, t [B] in (0, 1)."""
    a, s, da, ds = model.coefficients(t)
    mix = jax.tree.map(lambda v: jnp.asarray(v, z.dtype), _MIX)
    x, eps = mixture_posterior(mix, z, jnp.square(a), jnp.square(s))
    return da[:, None] * x + ds[:, None] * eps


class MixtureVelocity(nn.Module):
    """The exact marginal velocity as a network (time input ``1000 t``; one unused parameter)."""

    fm_path: str = "linear"

    @nn.compact
    def __call__(self, z, t, label=None, train=False):
        self.param("unused", nn.initializers.zeros, ())
        model = diffusion.FlowMatchingModel(None, (2,), path=self.fm_path)
        return marginal_velocity(model, z, jnp.asarray(t, z.dtype) / 1000.0)


def mixture_data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = rng.choice(len(WEIGHTS), size=n, p=WEIGHTS)
    return MEANS[k] + STDS[k, None] * rng.normal(size=(n, 2))


def check_conditional_gradient_is_marginal(n: int, path: str = "linear", target_fn=None) -> Check:
    """For v_theta(z, t) = (theta_0 + theta_1 t) z + theta_2 + theta_3 t, the gradient of the conditional loss
    equals that of the marginal loss (Monte Carlo, the same (x, eps, t) on both sides)."""
    model = diffusion.FlowMatchingModel(None, (2,), path=path)
    target_fn = target_fn or model.conditional_target
    rng = np.random.default_rng(7)
    x = jnp.asarray(mixture_data(n, 8))
    eps = jnp.asarray(rng.normal(size=(n, 2)))
    t = jnp.asarray(rng.uniform(0.02, 0.98, size=n))
    theta = jnp.asarray([0.3, -0.7, 0.1, 0.2])

    def sq_err(th, zi, ui, ti):  # the squared error of one example
        return jnp.sum(jnp.square((th[0] + th[1] * ti) * zi + th[2] + th[3] * ti - ui))

    z, u_cond = target_fn(x, eps, t)
    u_marg = marginal_velocity(model, z, t)
    per_example = jax.vmap(jax.grad(sq_err), (None, 0, 0, 0))  # [n, 4]
    g_cond, g_marg = per_example(theta, z, u_cond, t), per_example(theta, z, u_marg, t)
    diff_mean, diff_se = mean_and_se(np.asarray(g_cond - g_marg))
    mag = np.abs(np.asarray(g_marg).mean(0))
    return compare(
        FAMILY, f"fm_gradient_{path}", f"Conditional flow matching has the marginal loss's gradient ({path} path)",
        r"\nabla_\theta \mathbb{E}\|v_\theta(z_t,t)-u_t(z_t|x,\epsilon)\|^2 = "
        r"\nabla_\theta \mathbb{E}\|v_\theta(z_t,t)-u_t(z_t)\|^2",
        diff_mean, 0.0, Z * diff_se,
        lhs_how=f"{n} samples: per-example gradients with FlowMatchingModel.conditional_target, minus those with "
                "the exact marginal velocity at the same z_t",
        rhs_how="0 (Lipman et al. 2022, theorem 2)",
        note=f"Tolerance {Z:g} standard errors of the paired difference; the gradients themselves are of size "
             f"{', '.join(f'{m:.3g}' for m in mag)}.")


def check_exact_velocity_ode_recovers_data(n: int, path: str = "linear") -> Check:
    """Samples of FlowMatchingModel (Heun, 100 steps) with the exact marginal velocity follow the mixture (KS)."""
    model = diffusion.FlowMatchingModel(MixtureVelocity(path), (2,), path=path)
    params, _ = model.init(jax.random.key(0))
    x = np.asarray(model.sample(params, jax.random.key(1), n, num_steps=100, solver="heun", t_min=1e-3), np.float64)
    proj = x @ PROJECTIONS.T
    stats = np.array([ks_statistic(proj[:, j], mixture_cdf(PROJECTIONS[j])) for j in range(PROJECTIONS.shape[0])])
    return compare(
        FAMILY, f"fm_exact_velocity_samples_data_{path}", f"The ODE of the exact marginal velocity samples the data "
                                                          f"({path} path)",
        r"\dot z = u_t(z),\ z_1 \sim \mathcal N(0, I) \;\Rightarrow\; z_0 \sim p_\mathrm{data}",
        stats, kolmogorov_critical(n, 1e-3 / PROJECTIONS.shape[0]), 0.0, relation="<=",
        lhs_how=f"one-sample KS statistics of {n} FlowMatchingModel.sample(solver='heun', num_steps=100, "
                "t_min=1e-3) points projected on e_1, e_2 and the diagonals",
        rhs_how="exact CDF of the projected mixture; KS critical value at level 1e-3 (Bonferroni)",
        note="Stopped at t = 1e-3, where the marginal field of a mixture is still smooth.")


def checks(fast: bool) -> list[Callable[[], Check | Sequence[Check]]]:
    n = 20_000 if fast else 200_000
    m = 2000 if fast else 10_000
    return [functools.partial(check_conditional_gradient_is_marginal, n=n, path=p) for p in diffusion.FM_PATHS] + \
        [functools.partial(check_exact_velocity_ode_recovers_data, n=m, path=p) for p in diffusion.FM_PATHS]
