"""GAN losses: values at known logits, saturating vs non-saturating gradients, and the gradient
penalty / R1 against their per-example definitions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import gan


def _sigmoid(l):
    return 1.0 / (1.0 + math.exp(-l))


def test_value_function_at_zero_logits_is_minus_log4():
    # D = 1/2 everywhere: V = log(1/2) + log(1/2) = -log 4.
    v = gan.value_function(jnp.zeros(7), jnp.zeros(5))
    np.testing.assert_allclose(v, -math.log(4.0), rtol=1e-6)


def test_value_function_matches_naive_formula_and_is_stable():
    real = jnp.array([-2.0, 0.5, 3.0])
    fake = jnp.array([1.0, -1.5, 0.0, 4.0])
    naive = (np.mean([math.log(_sigmoid(l)) for l in real])
             + np.mean([math.log(1.0 - _sigmoid(l)) for l in fake]))
    np.testing.assert_allclose(gan.value_function(real, fake), naive, rtol=1e-5)
    # Extreme logits: log sigmoid(-200) = -200 exactly, where the naive formula gives -inf.
    v = gan.value_function(jnp.array([-200.0]), jnp.array([200.0]))
    np.testing.assert_allclose(v, -400.0, rtol=1e-6)


@pytest.mark.parametrize("kind", ["minimax", "non_saturating"])
def test_discriminator_loss_is_minus_value(kind):
    real = jnp.array([-2.0, 0.5, 3.0])
    fake = jnp.array([1.0, -1.5, 0.0])
    np.testing.assert_allclose(gan.discriminator_loss(real, fake, kind),
                               -gan.value_function(real, fake), rtol=1e-6)


def test_loss_values_at_known_logits():
    # At logit 0 every log-loss term is log 2.
    z = jnp.zeros(3)
    log2 = math.log(2.0)
    np.testing.assert_allclose(gan.discriminator_loss(z, z, "non_saturating"), 2 * log2, rtol=1e-6)
    np.testing.assert_allclose(gan.generator_loss(z, "non_saturating"), log2, rtol=1e-6)
    np.testing.assert_allclose(gan.generator_loss(z, "minimax"), -log2, rtol=1e-6)
    # Hinge: relu(1 - 0.5) + relu(1 + (-2)) = 0.5 + 0; G: -(-2) = 2.
    np.testing.assert_allclose(gan.discriminator_loss(jnp.array([0.5]), jnp.array([-2.0]), "hinge"), 0.5)
    np.testing.assert_allclose(gan.discriminator_loss(jnp.array([2.0]), jnp.array([0.5]), "hinge"), 1.5)
    np.testing.assert_allclose(gan.generator_loss(jnp.array([-2.0]), "hinge"), 2.0)
    # Wasserstein critic: E l_fake - E l_real; G: -E l_fake.
    np.testing.assert_allclose(
        gan.discriminator_loss(jnp.array([1.0, 3.0]), jnp.array([0.5, -0.5]), "wasserstein"), -2.0)
    np.testing.assert_allclose(gan.generator_loss(jnp.array([0.5, -0.5]), "wasserstein"), 0.0, atol=1e-7)
    # Least squares: (l_r - 1)^2 / 2 + l_f^2 / 2 and (l_f - 1)^2 / 2.
    np.testing.assert_allclose(gan.discriminator_loss(jnp.array([3.0]), jnp.array([2.0]), "least_squares"), 4.0)
    np.testing.assert_allclose(gan.generator_loss(jnp.array([-1.0]), "least_squares"), 2.0)
    # Known non-zero logits of the log losses.
    np.testing.assert_allclose(gan.generator_loss(jnp.array([1.5]), "non_saturating"),
                               -math.log(_sigmoid(1.5)), rtol=1e-6)
    np.testing.assert_allclose(gan.generator_loss(jnp.array([1.5]), "minimax"),
                               math.log(1.0 - _sigmoid(1.5)), rtol=1e-6)


def test_saturating_vs_non_saturating_generator_gradients():
    """d/dl log(1 - sigmoid(l)) = -sigmoid(l) -> 0 as D(G(z)) -> 0 (l -> -inf): the seed's generator
    loss saturates; d/dl -log sigmoid(l) = -(1 - sigmoid(l)) -> -1 does not."""
    grad_sat = jax.grad(lambda l: gan.generator_loss(l[None], "minimax"))
    grad_ns = jax.grad(lambda l: gan.generator_loss(l[None], "non_saturating"))
    for l in [-20.0, -10.0, -3.0, 0.0, 2.0]:
        np.testing.assert_allclose(grad_sat(l), -_sigmoid(l), rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(grad_ns(l), -(1.0 - _sigmoid(l)), rtol=1e-5, atol=1e-12)
    assert abs(grad_sat(-20.0)) < 1e-8
    np.testing.assert_allclose(grad_ns(-20.0), -1.0, rtol=1e-6)
    # Same sign (both push the logit up), same value at D = 1/2.
    np.testing.assert_allclose(grad_sat(0.0), grad_ns(0.0), rtol=1e-6)


def test_invalid_kind_and_shapes_raise():
    with pytest.raises(ValueError, match="loss kind"):
        gan.generator_loss(jnp.zeros(2), "vanilla")
    with pytest.raises(ValueError, match="per-example logits"):
        gan.value_function(jnp.zeros((2, 1)), jnp.zeros(2))


def _mlp_critic(key, dim):
    k1, k2, k3 = jax.random.split(key, 3)
    w1 = jax.random.normal(k1, (dim, 16)) / math.sqrt(dim)
    b1 = jax.random.normal(k2, (16,))
    w2 = jax.random.normal(k3, (16,)) / 4.0

    def critic(x):  # [B, dim] -> [B]
        return jnp.tanh(x @ w1 + b1[None, :]) @ w2 + jnp.sum(jnp.sin(x), axis=-1)

    return critic


def test_gradient_penalty_equals_per_example_definition():
    critic = _mlp_critic(jax.random.key(0), 3)
    real = jax.random.normal(jax.random.key(1), (6, 3))
    fake = 2.0 + jax.random.normal(jax.random.key(2), (6, 3))
    key = jax.random.key(3)
    gp = gan.gradient_penalty(critic, real, fake, key)
    # Independent computation: one interpolation coefficient per example, one grad per example.
    eps = jax.random.uniform(key, (6, 1))
    grad_one = jax.jit(jax.grad(lambda xi: critic(xi[None])[0]))  # d D(x_i) / d x_i for one example
    expected = []
    for i in range(6):
        x_hat = eps[i, 0] * real[i] + (1.0 - eps[i, 0]) * fake[i]
        g = grad_one(x_hat)
        expected.append((np.linalg.norm(np.asarray(g)) - 1.0) ** 2)
    assert gp.shape == (6,)
    np.testing.assert_allclose(gp, np.array(expected), rtol=1e-5)
    assert 0.0 <= float(jnp.min(eps)) and float(jnp.max(eps)) <= 1.0


def test_gradient_penalty_of_linear_critic_and_image_shapes():
    # D(x) = <w, x> has grad w everywhere, so the penalty is (||w|| - 1)^2 whatever eps is.
    w = jnp.arange(12.0).reshape(2, 2, 3) / 10.0
    critic = lambda x: jnp.sum(x * w[None], axis=(1, 2, 3))  # noqa: E731
    real = jax.random.normal(jax.random.key(0), (4, 2, 2, 3))
    fake = jax.random.normal(jax.random.key(1), (4, 2, 2, 3))
    gp = gan.gradient_penalty(critic, real, fake, jax.random.key(2))
    np.testing.assert_allclose(gp, np.full(4, (float(jnp.linalg.norm(w)) - 1.0) ** 2), rtol=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        gan.gradient_penalty(critic, real, fake[:3], jax.random.key(2))


def test_r1_equals_per_example_definition():
    critic = _mlp_critic(jax.random.key(4), 3)
    real = jax.random.normal(jax.random.key(5), (5, 3))
    r1 = gan.r1_penalty(critic, real)
    grad_one = jax.jit(jax.grad(lambda xi: critic(xi[None])[0]))  # d D(x_i) / d x_i for one example
    expected = [float(jnp.sum(jnp.square(grad_one(real[i])))) for i in range(5)]
    np.testing.assert_allclose(r1, expected, rtol=1e-5)
    # Quadratic critic D(x) = ||x||^2 / 2: grad = x, R1 = ||x||^2.
    r1_quad = gan.r1_penalty(lambda x: 0.5 * jnp.sum(x * x, axis=-1), real)
    np.testing.assert_allclose(r1_quad, jnp.sum(real * real, axis=-1), rtol=1e-5)
