"""Every flow layer: explicit log|det| == slogdet(jacfwd), round trips, identity at init, safety."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flow_test_utils import key, perturb  # noqa: F401 (key: fixture)
from gen_jax import flows


@functools.partial(jax.jit, static_argnums=(0, 3))
def _log_det_report(module, key, x, scale):
    """Init on ``x`` (float32), perturb, then in float64: explicit log-dets, round trip and the
    slogdet of the autodiff Jacobian, all in one compiled call (compiling is the slow part)."""
    variables = perturb(module.init(key, x.astype(jnp.float32)), jax.random.fold_in(key, 1), scale)
    variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables)
    b = x.shape[0]
    z, ld = module.apply(variables, x, method="forward")
    x_rec, ild = module.apply(variables, z, method="inverse")

    def f(v):
        out, _ = module.apply(variables, v.reshape((1,) + x.shape[1:]), method="forward")
        return out.reshape(-1)

    jac = jax.vmap(jax.jacfwd(f))(x.reshape(b, -1))
    return ld, ild, x_rec, jnp.linalg.slogdet(jac)


def check_bijector(module, x, key, *, scale=0.3, rtol=1e-6, atol=1e-6):
    """Inits ``module`` on ``x``, perturbs its parameters and checks, in float64:

    forward log-det == log|det jacfwd(forward)| per example, inverse(forward(x)) == x, and
    inverse log-det at z == -forward log-det at x (with the round trip, this makes the inverse
    log-det correct too: log|det J_{f^-1}(f(x))| = -log|det J_f(x)|).
    """
    with jax.enable_x64(True):
        x64 = jnp.asarray(x, jnp.float64)
        ld, ild, x_rec, (sign, logdet) = _log_det_report(module, key, x64, scale)
        assert ld.shape == (x.shape[0],) and ild.shape == (x.shape[0],)
        assert np.all(np.asarray(sign) != 0)
        np.testing.assert_allclose(ld, logdet, rtol=rtol, atol=atol)
        np.testing.assert_allclose(x_rec, x64, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ild, -ld, rtol=1e-6, atol=1e-6)
        return np.asarray(ld)


def _normal(key, shape, scale=1.0):
    return scale * jax.random.normal(key, shape, jnp.float32)


SLOW = pytest.mark.slow


def _case(name, make, shape, slow=False):
    return pytest.param(name, make, shape, id=name, marks=(SLOW,) if slow else ())


# Every layer type at least once in the default run; more shapes and masks under -m slow.
CASES = [
    _case("affine_vec", lambda: flows.Affine(scale=-1.7, shift=0.3), (3, 4)),
    _case("affine_img", lambda: flows.Affine(scale=0.5, shift=-0.5), (2, 4, 4, 2), slow=True),
    _case("permute_rev", lambda: flows.Permute("reverse"), (3, 5), slow=True),
    _case("permute_rand", lambda: flows.Permute("random", seed=3), (3, 5)),
    _case("squeeze", lambda: flows.Squeeze(), (2, 4, 4, 2)),
    _case("actnorm_vec", lambda: flows.ActNorm(), (8, 3), slow=True),
    _case("actnorm_img", lambda: flows.ActNorm(), (4, 4, 4, 2)),
    _case("conv1x1_lu_vec", lambda: flows.Invertible1x1Conv(lu=True, seed=1), (3, 4), slow=True),
    _case("conv1x1_lu_img", lambda: flows.Invertible1x1Conv(lu=True, seed=2), (2, 4, 4, 3)),
    _case("conv1x1_plain_vec", lambda: flows.Invertible1x1Conv(lu=False, seed=3), (3, 3)),
    _case("conv1x1_plain_img", lambda: flows.Invertible1x1Conv(lu=False, seed=3), (2, 4, 4, 3), slow=True),
    _case("affine_coupling_2d", lambda: flows.AffineCoupling(mask="alternate", parity=1, hidden=(8,)), (3, 2)),
    _case("affine_coupling_chan5", lambda: flows.AffineCoupling(mask="channel", hidden=(8,)), (3, 5), slow=True),
    _case("affine_coupling_alt5", lambda: flows.AffineCoupling(mask="alternate", hidden=(8,)), (3, 5)),
    _case("affine_coupling_chan_img", lambda: flows.AffineCoupling(mask="channel", parity=1, hidden=(8, 8)),
          (2, 4, 4, 3), slow=True),
    _case("affine_coupling_cb_img",
          lambda: flows.AffineCoupling(mask="checkerboard", parity=1, hidden=(8,), num_res_blocks=1), (2, 4, 4, 2)),
    _case("additive_coupling_vec", lambda: flows.AdditiveCoupling(mask="alternate", hidden=(8,)), (3, 5)),
    _case("additive_coupling_cb_img", lambda: flows.AdditiveCoupling(mask="checkerboard", hidden=(8,)),
          (2, 4, 4, 2), slow=True),
    _case("spline_coupling_2d", lambda: flows.SplineCoupling(hidden=(8,), num_bins=5, bound=2.0), (4, 2), slow=True),
    _case("spline_coupling_5d",
          lambda: flows.SplineCoupling(mask="channel", parity=1, hidden=(8,), num_bins=4, bound=1.5), (3, 5)),
    _case("spline_coupling_img", lambda: flows.SplineCoupling(mask="channel", hidden=(8,), num_bins=4, bound=2.0),
          (2, 4, 4, 2), slow=True),
    _case("maf_2d", lambda: flows.MaskedAutoregressive(hidden=(8, 8)), (3, 2), slow=True),
    _case("maf_4d", lambda: flows.MaskedAutoregressive(hidden=(8,)), (3, 4)),
    _case("chain", lambda: flows.Chain((flows.ActNorm(), flows.AffineCoupling(hidden=(8,)), flows.Permute("reverse"),
                                        flows.SplineCoupling(hidden=(8,), num_bins=3, bound=2.0))), (4, 3), slow=True),
    _case("multiscale",
          lambda: flows.MultiScaleFlow((
              flows.Chain((flows.Squeeze(), flows.Invertible1x1Conv())),
              flows.Chain((flows.Squeeze(), flows.ActNorm())),
          )), (2, 4, 4, 2)),
]


@pytest.mark.parametrize("name,make,shape", CASES)
def test_log_det_matches_autodiff_and_inverse(name, make, shape, key):
    # Scale 1.5 puts some spline inputs outside [-B, B] (identity tails) and others inside.
    x = _normal(jax.random.fold_in(key, 7), shape, 1.5 if "spline" in name else 1.0)
    ld = check_bijector(make(), x, key)
    volume_preserving = name.startswith(("permute", "squeeze", "additive"))
    if volume_preserving:
        np.testing.assert_allclose(ld, 0.0, atol=1e-12)
    else:
        assert np.max(np.abs(ld)) > 1e-3, "perturbed layer should change volume; the check would be vacuous"


def test_logit_log_det_matches_autodiff(key):
    for alpha, shape in [(0.05, (2, 4, 4, 1))]:
        x = jax.random.uniform(key, shape, jnp.float32, 0.01, 0.99)
        check_bijector(flows.Logit(alpha=alpha), x, key)


@pytest.mark.parametrize(
    "layer,shape",
    [
        (flows.AffineCoupling(mask="alternate", hidden=(8,)), (4, 3)),
        (flows.AffineCoupling(mask="checkerboard", hidden=(8,)), (2, 4, 4, 2)),
        (flows.AdditiveCoupling(mask="channel", hidden=(8,)), (2, 4, 4, 2)),
        (flows.SplineCoupling(hidden=(8,), num_bins=4), (4, 3)),
        (flows.MaskedAutoregressive(hidden=(8,)), (4, 3)),
    ],
    ids=["affine", "affine_cb", "additive", "spline", "maf"],
)
def test_fresh_coupling_is_identity(layer, shape, key):
    x = _normal(key, shape, 2.0)
    z, ld = jax.jit(lambda k, v: layer.apply(layer.init(k, v), v, method="forward"))(key, x)
    np.testing.assert_allclose(z, x, atol=1e-5)
    np.testing.assert_allclose(ld, 0.0, atol=1e-5)


def test_actnorm_data_init_standardises_init_batch(key):
    for shape in [(256, 3), (16, 4, 4, 5)]:
        x = 3.0 + 2.5 * _normal(key, shape) * jnp.arange(1.0, shape[-1] + 1.0).reshape((1,) * (len(shape) - 1) + (-1,))
        layer = flows.ActNorm()
        z, ld = jax.jit(lambda k, v: layer.apply(layer.init(k, v), v, method="forward"))(key, x)
        axes = tuple(range(len(shape) - 1))
        np.testing.assert_allclose(jnp.mean(z, axis=axes), 0.0, atol=1e-4)
        np.testing.assert_allclose(jnp.std(z, axis=axes), 1.0, atol=1e-4)
        # log|det| = positions * sum_c -log std_c
        positions = int(np.prod(shape[1:-1]))
        expected = -positions * jnp.sum(jnp.log(jnp.std(x, axis=axes)))
        np.testing.assert_allclose(ld, expected, rtol=1e-4)


def test_maf_jacobian_is_triangular(key):
    layer = flows.MaskedAutoregressive(hidden=(8, 8))
    x = _normal(key, (1, 5))

    @jax.jit
    def jacobian(k, v):
        variables = perturb(layer.init(k, v), jax.random.fold_in(k, 1), 0.5)
        return jax.jacfwd(lambda u: layer.apply(variables, u[None], method="forward")[0][0])(v[0])

    jac = jacobian(key, x)
    assert np.allclose(np.triu(np.asarray(jac), 1), 0.0)  # z_i depends on x_{<=i} only
    assert np.abs(np.tril(np.asarray(jac), -1)).max() > 1e-3  # and does depend on the past


def test_made_masks_are_autoregressive():
    masks = flows.made_masks(4, (7, 5), num_params=2)
    conn = masks[0]
    for m in masks[1:]:
        conn = (conn @ m > 0).astype(np.float32)
    conn = conn.reshape(4, 2, 4)  # [input, param, dim]
    for j in range(2):
        np.testing.assert_array_equal(conn[:, j, :] > 0, np.triu(np.ones((4, 4)), 1) > 0)


def test_spline_is_safe_and_invertible_for_extreme_inputs(key):
    k1, k2, k3 = jax.random.split(key, 3)
    n, k, bound = 9, 6, 3.0
    # Large parameters: bins down to the minimal width and slopes down to ~1e-7.
    w = _normal(k1, (n, k), 10.0)
    h = _normal(k2, (n, k), 10.0)
    d = _normal(k3, (n, k - 1), 10.0)
    x = jnp.array([-1e30, -1e4, -bound, -bound + 1e-6, 0.0, 1.234, bound - 1e-7, bound, 1e6], jnp.float32)
    spline = jax.jit(flows.rational_quadratic_spline, static_argnames=("bound", "inverse"))
    y, ld = spline(x, w, h, d, bound=bound)
    x_rec, ild = spline(y, w, h, d, bound=bound, inverse=True)
    for a in (y, ld, x_rec, ild):
        assert np.all(np.isfinite(np.asarray(a)))
    np.testing.assert_array_equal(np.asarray(y)[[0, 1, 8]], np.asarray(x)[[0, 1, 8]])  # identity tails
    # float32 round trip is as good as the conditioning allows: small error in y-space.
    np.testing.assert_allclose(np.abs(np.asarray(x_rec - x)) * np.exp(np.asarray(ld)), 0.0, atol=1e-5)
    # Gradients are finite too (training never sees NaN from the untaken branch).
    g = jax.jit(jax.grad(lambda a: jnp.sum(flows.rational_quadratic_spline(x, a, h, d, bound=bound)[1])))(w)
    assert np.all(np.isfinite(g))
    with jax.enable_x64(True):
        w64, h64, d64, x64 = (jnp.asarray(a, jnp.float64) for a in (w, h, d, x))
        y, ld = spline(x64, w64, h64, d64, bound=bound)
        x_rec, ild = spline(y, w64, h64, d64, bound=bound, inverse=True)
        np.testing.assert_allclose(x_rec, x64, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(ild, -ld, atol=1e-7)


def test_spline_is_monotone_and_maps_interval_onto_itself(key):
    k1, k2, k3 = jax.random.split(key, 3)
    x = jnp.linspace(-2.0, 2.0, 401)
    w, h, d = _normal(k1, (5,)), _normal(k2, (5,)), _normal(k3, (4,))

    @jax.jit
    def spline_and_autodiff_derivative(x):
        def one(xi):
            return flows.rational_quadratic_spline(xi, w, h, d, bound=2.0)
        (y, ld), dy = jax.vmap(lambda xi: (one(xi), jax.grad(lambda u: one(u)[0])(xi)))(x)
        return y, ld, dy

    y, ld, dy = spline_and_autodiff_derivative(x)
    assert np.all(np.diff(np.asarray(y)) > 0)
    np.testing.assert_allclose([y[0], y[-1]], [-2.0, 2.0], atol=1e-5)
    # The explicit derivative against autodiff, element-wise (the knots +-B are excluded: there
    # autodiff of the clip reports a one-sided 1/2 although both one-sided slopes are 1).
    np.testing.assert_allclose(ld[1:-1], jnp.log(dy[1:-1]), atol=2e-4)


def test_affine_coupling_scales_are_bounded_for_huge_parameters(key):
    layer = flows.AffineCoupling(mask="alternate", hidden=(8,), max_log_scale=2.0)
    x = _normal(key, (16, 4), 100.0)

    @jax.jit
    def round_trip(k, v):
        variables = perturb(layer.init(k, v), k, 100.0)
        z, ld = layer.apply(variables, v, method="forward")
        return z, ld, layer.apply(variables, z, method="inverse")[0]

    z, ld, x_rec = round_trip(key, x)
    assert np.all(np.isfinite(z)) and np.all(np.isfinite(ld))
    assert np.all(np.abs(np.asarray(ld)) <= 2 * 2.0 + 1e-4)  # two transformed dims, |s| <= 2
    np.testing.assert_allclose(x_rec, x, atol=1e-5 * float(jnp.max(jnp.abs(z))))


def test_logit_is_finite_at_the_ends_of_the_interval():
    x = jnp.array([[0.0, 1.0, 0.5, 1e-12]], jnp.float32)
    for alpha in (0.0, 1e-6, 0.05):
        z, ld = flows.Logit(alpha=alpha).apply({}, x, method="forward")
        assert np.all(np.isfinite(z)) and np.all(np.isfinite(ld))
    y, ild = flows.Logit(alpha=1e-6).apply({}, jnp.array([[-1e4, 1e4, 0.0]]), method="inverse")
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(ild))
    assert np.all((np.asarray(y) > -1e-5) & (np.asarray(y) < 1 + 1e-5))


def test_squeeze_moves_each_2x2_block_into_channels():
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    z, _ = flows.Squeeze().apply({}, x, method="forward")
    assert z.shape == (2, 2, 2, 12)
    np.testing.assert_array_equal(z[1, 1, 0].reshape(2, 2, 3), x[1, 2:4, 0:2])


def test_multiscale_factors_out_half_the_channels(key):
    # With identity levels the latent is (z_1, z_2) of the squeezed input, flattened and concatenated.
    flow = flows.MultiScaleFlow((flows.Chain((flows.Squeeze(),)), flows.Chain((flows.Squeeze(),))))
    x = _normal(key, (2, 4, 4, 2))
    z, ld = flow.apply({}, x, method="forward")
    h1, _ = flows.Squeeze().apply({}, x, method="forward")  # [2, 2, 2, 8]
    z1 = h1[..., 4:].reshape(2, -1)
    h2, _ = flows.Squeeze().apply({}, h1[..., :4], method="forward")
    np.testing.assert_array_equal(z.reshape(2, -1), jnp.concatenate([z1, h2.reshape(2, -1)], axis=1))
    np.testing.assert_array_equal(ld, 0.0)


@pytest.mark.parametrize(
    "layer,shape",
    [
        (flows.AffineCoupling(mask="diagonal"), (2, 4)),
        (flows.AffineCoupling(mask="checkerboard"), (2, 4)),
        (flows.AffineCoupling(mask="channel"), (2, 1)),
        (flows.Squeeze(), (2, 3, 4, 1)),
        (flows.Permute("shuffle"), (2, 4)),
        (flows.Logit(alpha=0.5), (2, 4)),
        (flows.MaskedAutoregressive(), (2, 4, 4, 1)),
    ],
)
def test_bad_configuration_raises_value_error(layer, shape, key):
    with pytest.raises(ValueError):
        layer.init(key, jnp.full(shape, 0.5))


def test_module_types():
    assert issubclass(flows.AffineCoupling, nn.Module) and issubclass(flows.AffineCoupling, flows.Bijector)
