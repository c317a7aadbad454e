"""Fast samplers (DPM-Solver++(2M), EDM Heun): every model's data predictor is the exact posterior mean when its
network is exact (eps, x0 and v parameterisations, VDM, flow matching on both paths), both solvers converge at
second order on Gaussian data, and models sample through them. (Mode coverage and within-mode spread against
1000-step DDPM: experiments/derivations/diffusion_samplers.py, run by tests/test_derivations.py.)"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.derivations.diffusion_continuous import LMAX, LMIN, MixtureDenoiser
from experiments.derivations.diffusion_samplers import mixture_data_predictor
from experiments.derivations.flow_matching import MixtureVelocity
from gen_jax import diffusion

SCHED = diffusion.NoiseSchedule.linear(1000)  # log-SNR from 9.2 (t = 1) to -10.1 (t = T)


class ExactDDPMNet(nn.Module):
    """The mixture's exact eps / x0 / v at the (fractional) DDPM timestep tau: log-SNR interpolated as the models do."""

    parameterization: str

    @nn.compact
    def __call__(self, z, t, label=None, train=False):
        self.param("unused", nn.initializers.zeros, ())
        lam = jnp.interp(jnp.asarray(t, jnp.float32), jnp.arange(1, 1001, dtype=jnp.float32), SCHED.log_snr)
        x0 = jax.vmap(mixture_data_predictor)(z[:, None], lam)[:, 0]
        a, s = diffusion.alpha_sigma(lam[:, None])
        eps = (z - a * x0) / s
        return {"eps": eps, "x0": x0, "v": a * eps - s * x0}[self.parameterization]


def _check_predictor(model, params, lams):
    x_hat, lmax, lmin = model.data_predictor(params)
    assert float(lmax) > float(lmin)
    z = jax.random.normal(jax.random.key(0), (6, 2))
    for lam in lams:
        np.testing.assert_allclose(x_hat(z, jnp.float32(lam)), mixture_data_predictor(z, jnp.float32(lam)),
                                   rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_ddpm_data_predictor_is_exact_for_every_parameterization(parameterization):
    model = diffusion.DiffusionModel(ExactDDPMNet(parameterization), SCHED, (2,), parameterization=parameterization)
    params, _ = model.init(jax.random.key(0))
    _check_predictor(model, params, [-4.0, 0.3, 5.0])


def test_vdm_and_flow_matching_data_predictors_are_exact():
    vdm = diffusion.VariationalDiffusionModel(MixtureDenoiser(), diffusion.make_log_snr_schedule("linear", LMAX, LMIN),
                                              (2,))
    _check_predictor(vdm, vdm.init(jax.random.key(0))[0], [-4.0, 0.3, 5.0])
    for path in diffusion.FM_PATHS:
        fm = diffusion.FlowMatchingModel(MixtureVelocity(path), (2,), path=path)
        _check_predictor(fm, fm.init(jax.random.key(0))[0], [-4.0, 0.3, 5.0])


def test_solvers_converge_at_second_order_on_gaussian_data():
    s = 0.5

    def x_hat(z, lam):  # E[x | z] for x ~ N(0, s^2)
        a2, s2 = jax.nn.sigmoid(lam), jax.nn.sigmoid(-lam)
        return jnp.sqrt(a2) * s ** 2 * z / (a2 * s ** 2 + s2)

    z = jax.random.normal(jax.random.key(0), (256, 1))
    # the deterministic maps are linear in the initial noise: each solver's output is c_N z; the exact map is s z
    for fn in (diffusion.dpm_solver_pp_2m, diffusion.edm_heun):
        errs = [abs(float(jnp.mean(fn(x_hat, jax.random.key(0), (256, 1), 9.0, -10.0, num_steps=n) / z)) - s)
                for n in (20, 40, 80)]
        assert 3.0 < errs[0] / errs[1] < 5.5 and 3.0 < errs[1] / errs[2] < 5.5, (fn.__name__, errs)


def test_models_sample_through_the_fast_samplers():
    model = diffusion.DiffusionModel(diffusion.MLPDenoiser(hidden=16, num_blocks=1, time_dim=8), SCHED, (2,))
    params, _ = model.init(jax.random.key(0))
    for sampler in diffusion.FAST_SAMPLERS:
        x = model.sample(params, jax.random.key(1), 8, sampler=sampler, num_steps=5)
        assert x.shape == (8, 2) and bool(jnp.all(jnp.isfinite(x)))
    with pytest.raises(ValueError, match="num_steps must be"):
        diffusion.edm_heun(lambda z, lam: z, jax.random.key(0), (2, 2), 5.0, -5.0, num_steps=1)
