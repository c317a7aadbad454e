"""Flow matching: the paths and their conditional velocities, the ODE solvers' orders against the closed-form
flow of Gaussian data, validation, and training. (The conditional loss's gradient equals the marginal one, and
the exact marginal velocity's ODE samples a mixture: experiments/derivations/flow_matching.py, run by
tests/test_derivations.py.)"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_test_utils import train_on_ring8
from gen_jax import diffusion
from gen_jax.diffusion import FlowMatchingModel


@pytest.mark.parametrize("path", diffusion.FM_PATHS)
def test_conditional_velocity_is_the_time_derivative_of_the_path(path):
    model = FlowMatchingModel(None, (3,), path=path)
    x, eps = jax.random.normal(jax.random.key(0), (2, 5, 3))
    t = jnp.linspace(0.05, 0.95, 5)
    z, u = model.conditional_target(x, eps, t)
    _, dz = jax.jvp(lambda t: model.conditional_target(x, eps, t)[0], (t,), (jnp.ones_like(t),))
    np.testing.assert_allclose(u, dz, rtol=1e-4, atol=1e-5)
    a, s, _, _ = model.coefficients(jnp.asarray([0.0, 1.0]))
    if path == "linear":  # z_0 = x, z_1 = eps
        np.testing.assert_allclose([a[0], s[0], a[1], s[1]], [1, 0, 0, 1])
    else:  # variance preserving, from almost clean to almost pure noise
        np.testing.assert_allclose(a ** 2 + s ** 2, 1.0, rtol=1e-6)
        assert a[0] > 0.99 and s[1] > 0.99


class GaussianVelocity(nn.Module):
    """The exact marginal velocity for N(0, s^2 I) data: (alpha' alpha s^2 + sigma' sigma) / (alpha^2 s^2 + sigma^2) z."""

    s: float
    fm_path: str

    @nn.compact
    def __call__(self, z, t, label=None, train=False):
        self.param("unused", nn.initializers.zeros, ())
        a, sg, da, ds = FlowMatchingModel(None, (1,), path=self.fm_path).coefficients(t / 1000.0)
        return ((da * a * self.s ** 2 + ds * sg) / (a ** 2 * self.s ** 2 + sg ** 2))[:, None] * z


def test_ode_solvers_have_their_order_on_the_gaussian_flow():
    """Linear path, N(0, s^2) data: the exact flow maps z_1 to z_0 = s z_1. Euler's error halves when the steps
    double (first order), Heun's quarters (second order)."""
    s = 0.5
    model = FlowMatchingModel(GaussianVelocity(s, "linear"), (1,), path="linear")
    params, _ = model.init(jax.random.key(0))
    z1 = jax.random.normal(jax.random.key(1), (64, 1))
    errs = {}
    for solver in diffusion.ODE_SOLVERS:
        errs[solver] = [float(jnp.max(jnp.abs(model.sample(params, jax.random.key(1), 64, num_steps=n, solver=solver)
                                             - s * z1))) for n in (8, 16, 32)]
    e, h = errs["euler"], errs["heun"]
    assert 1.7 < e[0] / e[1] < 2.3 and 1.7 < e[1] / e[2] < 2.3, e
    assert 3.2 < h[1] / h[2] < 4.8, h  # the first Heun steps are not yet asymptotic
    assert h[2] < e[2] / 10


def test_validation():
    with pytest.raises(ValueError, match="path must be one of"):
        FlowMatchingModel(None, (2,), path="cosine")
    model = FlowMatchingModel(diffusion.MLPDenoiser(hidden=8, num_blocks=1, time_dim=8), (2,))
    params, _ = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match="solver must be one of"):
        model.sample(params, jax.random.key(0), 4, solver="rk4")


def test_flow_matching_lowers_its_loss_and_samples_near_the_data():
    model = FlowMatchingModel(diffusion.MLPDenoiser(hidden=64, num_blocks=2, time_dim=16), (2,), path="linear")
    state, losses, toy = train_on_ring8(model, 300, "loss")
    assert np.mean(losses[-30:]) < 0.8 * np.mean(losses[:30]), (np.mean(losses[:30]), np.mean(losses[-30:]))
    x = model.sample(state.params, jax.random.key(2), 1000, num_steps=50)
    # held-out log-density of the samples under the data distribution: far above that of the noise they started from
    noise = jax.random.normal(jax.random.key(2), (1000, 2))
    assert float(jnp.mean(toy.log_prob(x))) > float(jnp.mean(toy.log_prob(noise))) + 2.0
