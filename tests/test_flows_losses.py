"""The flow objective: NLL in nats, dequantization, the logit transform and bits/dim by hand."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gen_jax.flows
from gen_jax import flows
from gen_jax.data.preprocess import uniform_dequantize


@pytest.fixture
def key():
    return jax.random.key(0, impl="unsafe_rbg")


class _UniformOnUnitCube(nn.Module):
    """p_model(y) = 1 on [0, 1)^D."""

    @nn.compact
    def log_prob(self, y):
        return jnp.zeros(y.shape[:1], jnp.float32)


def _images(key, shape=(3, 4, 4, 1)):
    return jax.random.randint(key, shape, 0, 256).astype(jnp.uint8)


def test_uniform_model_scores_exactly_8_bits_per_dim(key):
    loss_fn = flows.NormalizingFlow(_UniformOnUnitCube()).loss
    x = _images(key, (5, 6, 6, 3))
    loss, (metrics, _) = jax.jit(loss_fn)({}, {}, {"x": x}, key)
    np.testing.assert_allclose(metrics["bits_per_dim"], 8.0, rtol=1e-6)
    np.testing.assert_allclose(loss, 8.0, rtol=1e-6)
    np.testing.assert_allclose(metrics["nll_nats"], 6 * 6 * 3 * math.log(256.0), rtol=1e-6)


def test_dequantize_adds_uniform_noise_inside_each_bin(key):
    x = _images(key, (64, 4, 4, 1))
    y = uniform_dequantize(key, x)
    v = np.asarray(y, np.float64) * 256.0
    np.testing.assert_array_equal(np.floor(v), np.asarray(x))  # x + u with u in [0, 1)
    u = v - np.asarray(x)
    assert 0.45 < u.mean() < 0.55 and u.min() >= 0.0 and u.max() < 1.0
    with pytest.raises(ValueError, match="integer"):  # floats are not dequantized twice
        uniform_dequantize(key, y)


def test_bits_per_dim_of_logit_gaussian_matches_hand_computation(key):
    """A fresh multi-scale RealNVP without ActNorm is logit pre-processing then the identity, so
    log p_model(y) = sum_i [log N(z_i; 0, 1) + log(1 - 2a) - log p_i - log(1 - p_i)],
    p = a + (1 - 2a) y, z = logit(p); nll = -log p_model(y) + D log 256; bpd = nll / (D log 2)."""
    alpha = 0.05
    model = flows.MultiScaleRealNVP(image_shape=(4, 4, 1), num_scales=1, hidden=(4,), actnorm=False, alpha=alpha)
    x = _images(key)
    params = jax.jit(model.init)(key, uniform_dequantize(key, x))["params"]
    loss, (metrics, _) = jax.jit(flows.NormalizingFlow(model).loss)(params, {}, {"x": x}, key)

    y = np.asarray(uniform_dequantize(key, x), np.float64)  # the same key -> the same noise
    p = alpha + (1 - 2 * alpha) * y
    z = np.log(p) - np.log1p(-p)
    log_p = np.sum(-0.5 * z**2 - 0.5 * np.log(2 * np.pi) + np.log(1 - 2 * alpha) - np.log(p) - np.log1p(-p),
                   axis=(1, 2, 3))
    d = 16
    nll = -log_p + d * np.log(256.0)
    np.testing.assert_allclose(metrics["nll_nats"], nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["bits_per_dim"], (nll / (d * np.log(2.0))).mean(), rtol=1e-5)
    np.testing.assert_allclose(loss, metrics["bits_per_dim"], rtol=1e-6)  # images: the loss is bits/dim


def test_continuous_data_loss_is_exact_nll_in_nats(key):
    model = flows.RealNVP(dim=2, num_layers=2, hidden=(4,))
    x = jax.random.normal(key, (7, 2))
    flow = flows.NormalizingFlow(model)
    params, model_state = flow.init(key, {"x": x})
    loss, (metrics, new_state) = jax.jit(flow.loss)(params, model_state, {"x": x}, key)
    assert model_state == {} and new_state == {}
    nll = 0.5 * np.sum(np.asarray(x, np.float64) ** 2, axis=1) + np.log(2 * np.pi)  # fresh flow: N(0, I)
    np.testing.assert_allclose(loss, nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["nll_nats"], nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["bits_per_dim"], nll.mean() / (2 * np.log(2.0)), rtol=1e-5)


def test_flow_nll_and_loss_validate_inputs(key):
    model = _UniformOnUnitCube()
    with pytest.raises(ValueError, match="needs a key"):
        flows.flow_nll(model, {}, _images(key))
    with pytest.raises(ValueError, match="'x'"):
        flows.NormalizingFlow(model).loss({}, {}, {"image": _images(key)}, key)


def test_discrete_nll_and_bits_per_dim_conversions():
    np.testing.assert_allclose(flows.discrete_nll_nats(jnp.array([0.0, -1.0]), 10), [10 * math.log(256), 10 * math.log(256) + 1])
    np.testing.assert_allclose(flows.discrete_nll_nats(jnp.array([0.0]), 3, num_bits=5), [3 * 5 * math.log(2)])
    np.testing.assert_allclose(flows.bits_per_dim(jnp.array([4 * math.log(2.0)]), 4), [1.0])


def test_every_exported_name_exists():
    for name in gen_jax.flows.__all__:
        assert hasattr(gen_jax.flows, name), name
    assert len(set(gen_jax.flows.__all__)) == len(gen_jax.flows.__all__)
