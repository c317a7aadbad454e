"""Whole flow models: log-det vs autodiff, invertibility, sampling, and normalised trained densities."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flow_test_utils import key, perturb  # noqa: F401 (key: fixture)
from gen_jax import flows


@functools.partial(jax.jit, static_argnums=(0, 3))
def _model_report(model, key, x, scale):
    """Init (data-dependent) on ``x``, perturb, then in float64: log-dets, round trip, slogdet(jacfwd)."""
    variables = perturb(model.init(key, x.astype(jnp.float32)), jax.random.fold_in(key, 1), scale)
    variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables)
    z, ld = model.apply(variables, x, method="forward")
    x_rec, ild = model.apply(variables, z, method="inverse")

    def f(v):
        out, _ = model.apply(variables, v.reshape((1,) + x.shape[1:]), method="forward")
        return out.reshape(-1)

    jac = jax.vmap(jax.jacfwd(f))(x.reshape(x.shape[0], -1))
    return z, ld, ild, x_rec, jnp.linalg.slogdet(jac)


def _uniform(key, shape):
    return jax.random.uniform(key, shape, jnp.float32, 0.02, 0.98)


def _normal(key, shape):
    return 1.5 * jax.random.normal(key, shape, jnp.float32)


# (model, input shape, input sampler, parameter noise). Deep image flows with noisy weights blow
# activations up (|z| ~ 1e5 at noise 0.2, where even float64 slogdet loses digits), so they get less.
MODELS = [
    pytest.param(lambda: flows.RealNVP(dim=2, num_layers=4, hidden=(8,), actnorm=True), (3, 2), _normal, 0.2,
                 id="realnvp_2d"),
    pytest.param(lambda: flows.NSF(dim=3, num_layers=2, hidden=(8,), num_bins=4, bound=2.0, lu_linear=True), (3, 3),
                 _normal, 0.2, id="nsf_3d"),
    pytest.param(lambda: flows.MAF(dim=3, num_layers=2, hidden=(8,), actnorm=True), (3, 3), _normal, 0.2,
                 id="maf_3d"),
    pytest.param(lambda: flows.Glow(image_shape=(4, 4, 2), num_levels=2, num_steps=1, hidden=(4, 4)),
                 (2, 4, 4, 2), _uniform, 0.05, id="glow_4x4x2"),
    pytest.param(lambda: flows.MultiScaleRealNVP(image_shape=(4, 4, 2), num_scales=2, hidden=(4,), num_res_blocks=0),
                 (2, 4, 4, 2), _uniform, 0.05, id="multiscale_realnvp_4x4x2", marks=pytest.mark.slow),
    pytest.param(lambda: flows.Glow(image_shape=(8, 8, 1), num_levels=2, num_steps=1, hidden=(8,), lu=False,
                                    additive=True, preprocess="logit", alpha=0.05),
                 (2, 8, 8, 1), _uniform, 0.05, id="glow_additive_plain_8x8x1", marks=pytest.mark.slow),
    pytest.param(lambda: flows.MultiScaleRealNVP(image_shape=(8, 8, 1), num_scales=3, hidden=(8,), num_res_blocks=1),
                 (2, 8, 8, 1), _uniform, 0.05, id="multiscale_realnvp_8x8x1", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("make,shape,draw,noise", MODELS)
def test_model_log_det_matches_autodiff(make, shape, draw, noise, key):
    model = make()
    x = draw(jax.random.fold_in(key, 3), shape)
    with jax.enable_x64(True):
        x64 = jnp.asarray(x, jnp.float64)
        z, ld, ild, x_rec, (sign, logdet) = _model_report(model, key, x64, noise)
        assert z.shape == x.shape and ld.shape == (shape[0],)
        assert np.all(np.asarray(sign) != 0)
        np.testing.assert_allclose(ld, logdet, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(x_rec, x64, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ild, -ld, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: flows.RealNVP(dim=2, num_layers=2, hidden=(8,)),
        lambda: flows.NSF(dim=2, num_layers=2, hidden=(8,), num_bins=4),
        lambda: flows.MAF(dim=2, num_layers=2, hidden=(8,)),
    ],
    ids=["realnvp", "nsf", "maf"],
)
def test_fresh_vector_flow_is_standard_normal(make, key):
    model = make()
    x = _normal(key, (5, 2))
    log_p = jax.jit(lambda k, v: model.apply(model.init(k, v), v, method="log_prob"))(key, x)
    expected = -0.5 * jnp.sum(x**2, axis=1) - math.log(2 * math.pi)
    np.testing.assert_allclose(log_p, expected, rtol=1e-5, atol=1e-5)


def test_sampling_inverts_the_flow_with_temperature(key):
    model = flows.Glow(image_shape=(4, 4, 1), num_levels=1, num_steps=1, hidden=(4,), preprocess="logit")
    temperatures = jnp.array([1.0, 0.5, 0.0])

    @jax.jit
    def run(k, v):
        variables = perturb(model.init(k, v), k, 0.1)
        samples = jax.vmap(lambda t: model.apply(variables, k, 5, t, method="sample"))(temperatures)
        eps = jax.random.normal(k, (5, 4, 4, 1))
        direct = jax.vmap(lambda t: model.apply(variables, t * eps, method="inverse")[0])(temperatures)
        return samples, direct

    samples, direct = run(key, _uniform(key, (4, 4, 4, 1)))
    assert samples.shape == (3, 5, 4, 4, 1)
    np.testing.assert_allclose(samples, direct, atol=1e-6)  # sample == f^{-1}(T * eps), eps ~ N(0, I)
    cold = samples[2]
    np.testing.assert_allclose(cold, jnp.broadcast_to(cold[:1], cold.shape), atol=1e-6)  # T = 0: f^{-1}(0)
    spread = [float(jnp.std(samples[i] - cold)) for i in range(3)]
    assert spread[0] > spread[1] > spread[2] == 0.0  # lower temperature, less spread
    assert np.all((np.asarray(samples) >= 0) & (np.asarray(samples) <= 1))  # logit pre-processing -> [0, 1]


def test_models_validate_shapes(key):
    with pytest.raises(ValueError, match="expects x of shape"):
        model = flows.RealNVP(dim=2, hidden=(4,))
        model.init(key, jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match="divisible"):
        model = flows.Glow(image_shape=(6, 6, 1), num_levels=2, num_steps=1, hidden=(4,))
        model.init(key, jnp.zeros((1, 6, 6, 1)))


# -- A flow trained briefly on a 2D Gaussian mixture is a normalised density. --------------------

_MEANS = np.array([[-1.5, -1.0], [1.5, 1.0]], np.float32)
_STD = 0.5
_WEIGHTS = np.array([0.3, 0.7], np.float32)


def _mixture_sample(key, n):
    k1, k2 = jax.random.split(key)
    comp = jax.random.bernoulli(k1, _WEIGHTS[1], (n,)).astype(jnp.int32)
    return jnp.asarray(_MEANS)[comp] + _STD * jax.random.normal(k2, (n, 2))


def _mixture_log_prob(x):
    d2 = jnp.sum((x[:, None, :] - jnp.asarray(_MEANS)[None]) ** 2, axis=-1)  # [N, 2]
    comp = -0.5 * d2 / _STD**2 - math.log(2 * math.pi * _STD**2) + jnp.log(jnp.asarray(_WEIGHTS))[None]
    return jax.scipy.special.logsumexp(comp, axis=1)


TRAINED = [
    pytest.param(lambda: flows.RealNVP(dim=2, num_layers=6, hidden=(32, 32)), id="realnvp"),
    pytest.param(lambda: flows.NSF(dim=2, num_layers=3, hidden=(32, 32), num_bins=8, bound=4.0), id="nsf",
                 marks=pytest.mark.slow),
    pytest.param(lambda: flows.MAF(dim=2, num_layers=4, hidden=(32, 32)), id="maf", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("make", TRAINED)
def test_trained_flow_density_integrates_to_one(make, key):
    model = make()
    loss_fn = flows.NormalizingFlow(model).loss
    tx = optax.adam(3e-3)
    num_steps, batch, half_width, n_grid = 300, 256, 6.0, 241

    @jax.jit
    def train_and_measure(key):
        k_init, k_train, k_eval = jax.random.split(key, 3)
        params = model.init(k_init, _mixture_sample(k_init, batch))["params"]

        def step(carry, k):
            params, opt_state = carry
            (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, {}, {"x": _mixture_sample(k, batch)},
                                                                          k)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(k_train, num_steps))
        # Riemann sum of p over a box holding the mass (the mixture puts < 1e-6 outside it).
        g = jnp.linspace(-half_width, half_width, n_grid)
        grid = jnp.stack(jnp.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
        density = jnp.exp(model.apply({"params": params}, grid, method="log_prob"))
        mass = jnp.sum(density) * (g[1] - g[0]) ** 2
        x_test = _mixture_sample(k_eval, 4096)
        nll = -jnp.mean(model.apply({"params": params}, x_test, method="log_prob"))
        entropy = -jnp.mean(_mixture_log_prob(x_test))
        samples = model.apply({"params": params}, k_eval, 4096, method="sample")
        return losses, mass, nll, entropy, samples

    losses, mass, nll, entropy, samples = train_and_measure(key)
    assert np.all(np.isfinite(np.asarray(losses)))
    assert float(jnp.mean(losses[-20:])) < float(jnp.mean(losses[:20])) - 0.5  # the loss falls
    assert abs(float(mass) - 1.0) < 1e-2, f"density integrates to {float(mass)}"
    assert float(nll) < float(entropy) + 0.15, (float(nll), float(entropy))  # close to the true entropy
    # samples (drawn through the inverse) have the mixture's mean E[x] = sum_k w_k mu_k
    np.testing.assert_allclose(jnp.mean(samples, axis=0), _WEIGHTS @ _MEANS, atol=0.1)
