"""The probability-flow ODE likelihood: dequantisation arithmetic, Hutchinson's estimate of the whole integral
against the exact one, validation, and the evaluator on a toy run. (Exactness against closed-form marginals,
the affine change of variables against a flow's log-det and the unbiasedness of the divergence estimate:
experiments/derivations/ode_likelihood.py, run by tests/test_derivations.py.)"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.derivations.flow_matching import MixtureVelocity
from gen_jax import diffusion
from gen_jax.ops import standard_normal_log_prob


def test_dequantized_bits_per_dim_of_a_static_field_is_the_prior_density_of_the_dequantized_image():
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 4, 4, 1)), jnp.uint8)
    flow = (lambda z, t: jnp.zeros_like(z)), 0.0, 1.0  # v = 0: p_0 = p_1 = N(0, I)
    key = jax.random.key(1)
    out = diffusion.dequantized_bits_per_dim(flow, x, key)
    u = jax.random.uniform(jax.random.split(key)[0], x.shape)
    y = 2 * (x.astype(jnp.float32) + u) / 256 - 1
    D = 16
    expected = -(standard_normal_log_prob(y) + D * math.log(2 / 256)) / (D * math.log(2))
    np.testing.assert_allclose(out["bits_per_dim"], expected, rtol=1e-5)
    np.testing.assert_allclose(out["delta_log_prob"], 0.0, atol=1e-6)


@pytest.mark.slow  # 13 ODE solves; the divergence estimate's unbiasedness is a derivation check (fast report)
def test_hutchinson_likelihood_averages_to_the_exact_one():
    model = diffusion.FlowMatchingModel(MixtureVelocity("linear"), (2,), path="linear")
    params, _ = model.init(jax.random.key(0))
    flow = model.probability_flow(params, t_min=1e-2)
    x = jnp.asarray([[-1.0, -0.4], [0.9, 0.8], [0.1, 1.1]])
    exact = diffusion.ode_log_likelihood(flow, x, rtol=1e-5, atol=1e-5)["log_prob"]
    runs = np.stack([np.asarray(diffusion.ode_log_likelihood(flow, x, jax.random.key(k), divergence_kind="rademacher",
                                                             num_probes=4, rtol=1e-5, atol=1e-5)["log_prob"])
                     for k in range(12)])
    mean, se = runs.mean(0), runs.std(0, ddof=1) / math.sqrt(len(runs))
    assert np.all(np.abs(mean - np.asarray(exact)) < 4 * se + 1e-3), (mean, exact, se)
    assert np.all(se > 0)  # the probes do vary the estimate


def test_validation():
    flow = (lambda z, t: z), 0.0, 1.0
    x = jnp.zeros((2, 2))
    with pytest.raises(ValueError, match="divergence must be one of"):
        diffusion.ode_log_likelihood(flow, x, divergence_kind="trace")
    with pytest.raises(ValueError, match="needs a key"):
        diffusion.ode_log_likelihood(flow, x, divergence_kind="gaussian")
