"""Fast samplers (DPM-Solver++(2M), EDM Heun): every model's data predictor is the exact posterior mean when its
network is exact (eps, x0 and v parameterisations, VDM, flow matching on both paths), both solvers converge at
second order on Gaussian data, and models sample through them. (Mode coverage and within-mode spread against
1000-step DDPM: experiments/derivations/diffusion_samplers.py, run by tests/test_derivations.py.)"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.derivations.diffusion_continuous import LMAX, LMIN, MixtureDenoiser
from experiments.derivations.diffusion_samplers import ExactDDPMNet as _ExactDDPMNet, mixture_data_predictor
from experiments.derivations.flow_matching import MixtureVelocity
from gen_jax import diffusion

SCHED = diffusion.NoiseSchedule.linear(1000)  # log-SNR from 9.2 (t = 1) to -10.1 (t = T)


def ExactDDPMNet(parameterization):  # noqa: N802 - the derivations' exact network on this schedule
    return _ExactDDPMNet(parameterization, SCHED)


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


S = 0.5  # Gaussian data x ~ N(0, S^2)


def gaussian_x_hat(z, lam):  # E[x | z]
    a2, s2 = jax.nn.sigmoid(lam), jax.nn.sigmoid(-lam)
    return jnp.sqrt(a2) * S ** 2 * z / (a2 * S ** 2 + s2)


def test_solvers_converge_at_second_order_on_gaussian_data():
    s, x_hat = S, gaussian_x_hat
    z = jax.random.normal(jax.random.key(0), (256, 1))
    # the deterministic maps are linear in the initial noise: each solver's output is c_N z; the exact map is s z
    karras = functools.partial(diffusion.dpm_solver_pp_2m, spacing="karras")
    karras.__name__ = "dpm_solver_pp_2m(spacing='karras')"
    for fn in (diffusion.dpm_solver_pp_2m, karras, diffusion.edm_heun):
        errs = [abs(float(jnp.mean(fn(x_hat, jax.random.key(0), (256, 1), 9.0, -10.0, num_steps=n) / z)) - s)
                for n in (20, 40, 80)]
        assert 3.0 < errs[0] / errs[1] < 5.5 and 3.0 < errs[1] / errs[2] < 5.5, (fn.__name__, errs)


def test_solver_levels():
    lmax, lmin, n = 9.2, -10.1, 20
    for spacing in diffusion.LOG_SNR_SPACINGS:
        lam = np.asarray(diffusion.solver_log_snrs(lmax, lmin, n, spacing), np.float64)
        assert lam.shape == (n,) and np.all(np.diff(lam) > 0), spacing
        np.testing.assert_allclose(lam[[0, -1]], [lmin, lmax], rtol=1e-5)
    np.testing.assert_allclose(np.diff(np.asarray(diffusion.solver_log_snrs(lmax, lmin, n), np.float64)),
                               (lmax - lmin) / (n - 1), rtol=1e-5)
    # Karras et al.'s levels: sigma~ = exp(-lambda / 2) equally spaced in sigma~^(1 / rho); in log-SNR their steps
    # grow from the noise to the data (0.56 to 2.03 here, against 1.02 for uniform levels)
    lam = np.asarray(diffusion.solver_log_snrs(lmax, lmin, n, "karras", rho=7.0), np.float64)
    root = np.exp(-lam / 2) ** (1 / 7.0)
    np.testing.assert_allclose(np.diff(root), np.diff(root)[0], rtol=1e-3)
    assert np.all(np.diff(lam, 2) > 0) and np.diff(lam)[0] < (lmax - lmin) / (n - 1) < np.diff(lam)[-1]
    with pytest.raises(ValueError, match="spacing must be one of"):
        diffusion.solver_log_snrs(lmax, lmin, n, "quadratic")


def test_edm_stochastic_sampler_samples_the_data_with_fresh_noise():
    n, key = 20_000, jax.random.key(3)
    z = jax.random.normal(key, (n, 1))  # the sampler's initial noise (drawn from the same key)
    det = diffusion.edm_heun(gaussian_x_hat, key, (n, 1), 9.0, -10.0, num_steps=32)
    # the deterministic sampler is a linear map of the initial noise (about S z here); churn adds noise along
    # the way, so the output is no longer a function of it
    assert abs(float(jnp.corrcoef(det[:, 0], z[:, 0])[0, 1]) - 1.0) < 1e-4
    assert abs(float(jnp.mean(det / z)) - S) < 0.01  # 32 Heun levels: 1.7 % off (second order: the test above)
    err = {}
    for steps in (32, 256):  # the largest churn (gamma = sqrt 2 - 1 at every level): first order in the steps
        sto = diffusion.edm_heun(gaussian_x_hat, key, (n, 1), 9.0, -10.0, num_steps=steps, churn=2.0 * steps)
        assert abs(float(jnp.corrcoef(sto[:, 0], z[:, 0])[0, 1])) < 0.05
        err[steps] = abs(float(jnp.std(sto)) - S)
        assert abs(float(jnp.mean(sto))) < 0.015  # 4 standard errors
    # the sample's std converges to S (its standard error: S / sqrt(2 n) = 0.0025)
    assert err[256] < 0.01 and err[256] < err[32], err
    with pytest.raises(ValueError, match="churn must be"):
        diffusion.edm_heun(gaussian_x_hat, key, (2, 1), 9.0, -10.0, churn=-1.0)


def test_sde_dpm_solver_samples_the_data_with_fresh_noise():
    """SDE-DPM-Solver++(2M) on Gaussian data with the exact denoiser: its output is not a function of the initial
    noise (fresh noise at each step), and its std converges to the data's S as the steps grow (measured:
    +0.015 at 20 steps, +0.0002 at 160; the std's standard error is S / sqrt(2 n) = 0.0025)."""
    n, key = 20_000, jax.random.key(3)
    z = jax.random.normal(key, (n, 1))  # the sampler's initial noise (drawn from the same key)
    err = {}
    for steps in (20, 160):
        x = diffusion.dpm_solver_pp_2m_sde(gaussian_x_hat, key, (n, 1), 9.0, -10.0, num_steps=steps)
        assert abs(float(jnp.corrcoef(x[:, 0], z[:, 0])[0, 1])) < 0.05
        assert abs(float(jnp.mean(x))) < 0.015  # 4 standard errors
        err[steps] = abs(float(jnp.std(x)) - S)
    assert err[160] < 0.0075 and err[160] < err[20], err


def test_models_sample_through_the_fast_samplers():
    model = diffusion.DiffusionModel(diffusion.MLPDenoiser(hidden=16, num_blocks=1, time_dim=8), SCHED, (2,))
    params, _ = model.init(jax.random.key(0))
    for sampler in diffusion.FAST_SAMPLERS:
        x = model.sample(params, jax.random.key(1), 8, sampler=sampler, num_steps=5)
        assert x.shape == (8, 2) and bool(jnp.all(jnp.isfinite(x)))
    x = model.sample(params, jax.random.key(1), 8, sampler="edm_heun", num_steps=5, churn=10.0)
    assert x.shape == (8, 2) and bool(jnp.all(jnp.isfinite(x)))
    for sampler in ("dpm_solver_pp_2m", "dpm_solver_pp_2m_sde"):
        x = model.sample(params, jax.random.key(1), 8, sampler=sampler, num_steps=5, spacing="karras")
        assert x.shape == (8, 2) and bool(jnp.all(jnp.isfinite(x)))
    with pytest.raises(ValueError, match="spacing is an option of the DPM-Solver"):
        model.sample(params, jax.random.key(1), 8, sampler="edm_heun", num_steps=5, spacing="karras")
    with pytest.raises(ValueError, match="churn is an option of 'edm_heun'"):
        model.sample(params, jax.random.key(1), 8, sampler="dpm_solver_pp_2m", num_steps=5, churn=10.0)
    with pytest.raises(ValueError, match="num_steps must be"):
        diffusion.edm_heun(lambda z, lam: z, jax.random.key(0), (2, 2), 5.0, -5.0, num_steps=1)
