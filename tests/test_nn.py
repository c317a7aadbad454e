"""Shared layers: the sub-pixel upsampler and the space-to-depth downsampler represent the stride-2
(transposed) convolutions exactly; the tap forms of gen_jax.nn.conv_general_dilated equal XLA's
convolution, values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import nn as gnn
from gen_jax.nn import Conv, Downsample2x, Upsample2x, depth_to_space, space_to_depth

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("shape,padding,form", [
    ((3, 9, 8, 2), "SAME", "input"),           # a flow coupling's first conv: 2 channels in
    ((3, 9, 8, 1), "VALID", "input"),
    ((3, 7, 7, 4), ((2, 0), (1, 3)), "input"),  # uneven explicit padding
    ((3, 9, 8, 24), "SAME", "output"),          # a decoder's last conv: 1 channel out
    ((3, 7, 6, 24), ((0, 2), (1, 1)), "output"),
    ((3, 9, 8, 32), "SAME", None),              # wide on both sides: XLA's convolution
    ((3, 9, 8, 2), ((-1, 1), (1, 0)), "input"),  # negative padding (crops): handed to XLA
])
@pytest.mark.parametrize("kernel", [(3, 3), (2, 3)])
def test_tap_convolutions_equal_xlas_convolution(shape, padding, form, kernel):
    c_out = {"input": 16, "output": 1, None: 16}[form]
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), kernel + (shape[-1], c_out))
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    assert gnn._tap_form(x.shape, w.shape, (1, 1), None, None, dn, 1, 1, {}) == form
    ours = lambda x, w: gnn.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn)  # noqa: E731
    xla = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn)  # noqa: E731
    value_and_vjp = lambda f: jax.jit(lambda x, w, dy: (f(x, w), jax.vjp(f, x, w)[1](dy)))  # noqa: E731
    dy = jax.random.normal(jax.random.key(2), jax.eval_shape(xla, x, w).shape)
    (y, grads), (y_ref, grads_ref) = value_and_vjp(ours)(x, w, dy), value_and_vjp(xla)(x, w, dy)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding", ["SAME", ((1, 0), (0, 2))])
def test_1x1_convolutions_of_any_width_are_one_matmul(padding):
    """A 1x1 convolution (Glow's and RealNVP's 128-channel conditioner layers) is a matmul at every
    pixel: same values and gradients as XLA's convolution, and no convolution op in the program."""
    x = jax.random.normal(jax.random.key(0), (3, 7, 6, 32))
    w = jax.random.normal(jax.random.key(1), (1, 1, 32, 48))
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    assert gnn._tap_form(x.shape, w.shape, (1, 1), None, None, dn, 1, 1, {}) == "input"
    ours = lambda x, w: gnn.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn)  # noqa: E731
    xla = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn)  # noqa: E731
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
    np.testing.assert_allclose(ours(x, w), xla(x, w), rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(xla), (0, 1))(x, w)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)
    assert "conv_general_dilated" not in str(jax.make_jaxpr(jax.grad(loss(ours), (0, 1)))(x, w))


def test_tap_form_leaves_strided_dilated_and_grouped_convolutions_to_xla():
    x, w = (2, 8, 8, 2), (3, 3, 2, 8)
    dn = jax.lax.conv_dimension_numbers(x, w, NHWC)
    assert gnn._tap_form(x, w, (1, 1), None, None, dn, 1, 1, {}) == "input"
    assert gnn._tap_form(x, w, (2, 2), None, None, dn, 1, 1, {}) is None
    assert gnn._tap_form(x, w, (1, 1), (2, 2), None, dn, 1, 1, {}) is None
    assert gnn._tap_form(x, w, (1, 1), None, (2, 2), dn, 1, 1, {}) is None
    assert gnn._tap_form(x, (3, 3, 1, 8), (1, 1), None, None, dn, 2, 1, {}) is None
    assert gnn._tap_form(x, (1, 1, 2, 8), (2, 2), None, None, dn, 1, 1, {}) is None  # strided 1x1
    nchw = jax.lax.conv_dimension_numbers((2, 2, 8, 8), (8, 2, 3, 3), ("NCHW", "OIHW", "NCHW"))
    assert gnn._tap_form((2, 2, 8, 8), (8, 2, 3, 3), (1, 1), None, None, nchw, 1, 1, {}) is None


def test_conv_module_matches_flax_conv_and_takes_the_tap_route():
    """Same parameters and outputs as flax's Conv; a 2-channel input runs without an XLA convolution,
    a wide one with it."""
    x = jax.random.normal(jax.random.key(0), (2, 10, 10, 2))
    params = nn.Conv(32, (3, 3)).init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, Conv(32, (3, 3)).init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, params)
    np.testing.assert_allclose(Conv(32, (3, 3)).apply(params, x), nn.Conv(32, (3, 3)).apply(params, x),
                               rtol=1e-5, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(lambda p: Conv(32, (3, 3)).apply(p, x))(params))
    assert "conv_general_dilated" not in jaxpr
    wide = jnp.zeros((2, 10, 10, 32))
    wide_params = Conv(32, (3, 3)).init(jax.random.key(1), wide)
    assert "conv_general_dilated" in str(jax.make_jaxpr(lambda p: Conv(32, (3, 3)).apply(p, wide))(wide_params))


def test_set_cpu_kernels_is_the_one_switch_of_the_tap_route():
    """The CPU kernels follow one policy: on by default on the CPU, off everywhere with
    set_cpu_kernels(False) (XLA's convolution, as other backends get), back to the default with None."""
    x = jnp.zeros((2, 10, 10, 2))
    params = Conv(32, (3, 3)).init(jax.random.key(1), x)

    def has_conv():
        return "conv_general_dilated" in str(jax.make_jaxpr(lambda p: Conv(32, (3, 3)).apply(p, x))(params))

    assert gnn.cpu_kernels() and not has_conv()
    try:
        gnn.set_cpu_kernels(False)
        assert not gnn.cpu_kernels() and has_conv()
    finally:
        gnn.set_cpu_kernels(None)
    assert gnn.cpu_kernels() and not has_conv()
    with pytest.raises(ValueError, match="True, False or None"):
        gnn.set_cpu_kernels("auto")


@pytest.mark.parametrize("kernel", [3, 4])  # the VAE decoder's and DCGAN's transposed convolutions
def test_subpixel_upsampling_represents_the_transposed_convolution_exactly(kernel):
    """The transposed conv is linear: read its response to a unit impulse at input pixel (2, 2) and put
    output pixel (2i + a, 2j + b) at 3x3 tap (3 - i, 3 - j) of sub-pixel phase (a, b). The sub-pixel
    layer with those weights must then agree on any input (this also pins depth_to_space's order)."""
    cin, cout = 3, 5
    transposed = Upsample2x(cout, "transpose", kernel=kernel)
    tp = transposed.init(jax.random.key(0), jnp.zeros((1, 5, 5, cin)))["params"]["ConvTranspose_0"]
    tp = {"kernel": jax.random.normal(jax.random.key(1), tp["kernel"].shape), "bias": tp["bias"] + 0.3}
    apply_t = lambda x: transposed.apply({"params": {"ConvTranspose_0": tp}}, x)  # noqa: E731
    impulses = jnp.zeros((cin, 5, 5, cin)).at[jnp.arange(cin), 2, 2, jnp.arange(cin)].set(1.0)
    response = apply_t(impulses) - tp["bias"][None, None, None]  # [cin, 10, 10, cout]
    kernel3 = np.zeros((3, 3, cin, 2, 2, cout), np.float32)
    for dy in range(3):
        for dx in range(3):
            for a in range(2):
                for b in range(2):
                    kernel3[dy, dx, :, a, b, :] = response[:, 2 * (3 - dy) + a, 2 * (3 - dx) + b, :]
    # every response outside the 3x3 window is zero: nothing is lost in the mapping
    assert float(jnp.abs(response).sum()) == pytest.approx(float(np.abs(kernel3).sum()), rel=1e-6)
    sp = {"Conv_0": {"kernel": jnp.asarray(kernel3.reshape(3, 3, cin, 4 * cout)),
                     "bias": jnp.tile(tp["bias"], 4)}}
    x = jax.random.normal(jax.random.key(2), (2, 7, 7, cin))
    want = apply_t(x)
    got = Upsample2x(cout, "subpixel").apply({"params": sp}, x)
    assert got.shape == want.shape == (2, 14, 14, cout)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_depth_to_space_places_channels_as_documented():
    h = jnp.arange(2 * 2 * 4 * 3, dtype=jnp.float32).reshape(1, 2, 2, 12)  # block 2, C = 3
    out = depth_to_space(h, 2)
    assert out.shape == (1, 4, 4, 3)
    for i, j, a, c, k in [(0, 0, 0, 0, 0), (1, 0, 1, 1, 2), (0, 1, 0, 1, 1), (1, 1, 1, 0, 0)]:
        assert out[0, 2 * i + a, 2 * j + c, k] == h[0, i, j, (a * 2 + c) * 3 + k]
    with pytest.raises(ValueError, match="not divisible by block"):
        depth_to_space(jnp.zeros((1, 2, 2, 6)), 2)
    with pytest.raises(ValueError, match="upsample must be one of"):
        Upsample2x(4, "nearest").init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)))


@pytest.mark.parametrize("kernel", [3, 4])  # the VAE encoder's and DCGAN's strided convolutions
def test_space_to_depth_downsampling_represents_the_strided_convolution_exactly(kernel):
    """A 'SAME' stride-2 conv reads input rows 2i-1..2i+2 (kernel 4: one row of padding before) or
    2i..2i+2 (kernel 3: none before). In the frame padded by one row, that is offset a = 0..3 (kernel 4)
    or 1..3 (kernel 3); offset a = 2u + a' is block row u, phase a' of the space-to-depth input, so
    the 2x2 conv's weight [u, v, (2a' + b') C + c] is the strided kernel's tap (2u + a', 2v + b', c)."""
    cin, cout = 3, 5
    strided = Downsample2x(cout, "strided", kernel=kernel)
    sp = strided.init(jax.random.key(0), jnp.zeros((1, 8, 8, cin)))["params"]["Conv_0"]
    sp = {"kernel": jax.random.normal(jax.random.key(1), sp["kernel"].shape), "bias": sp["bias"] + 0.3}
    w4 = np.zeros((4, 4, cin, cout), np.float32)
    w4[4 - kernel:, 4 - kernel:] = sp["kernel"]
    v = np.zeros((2, 2, 2, 2, cin, cout), np.float32)  # [u, v, a', b', c, f]
    for u in range(2):
        for w in range(2):
            for a in range(2):
                for b in range(2):
                    v[u, w, a, b] = w4[2 * u + a, 2 * w + b]
    s2d = {"Conv_0": {"kernel": jnp.asarray(v.reshape(2, 2, 4 * cin, cout)), "bias": sp["bias"]}}
    for size in (14, 8):
        x = jax.random.normal(jax.random.key(size), (2, size, size, cin))
        want = strided.apply({"params": {"Conv_0": sp}}, x)
        got = Downsample2x(cout, "space_to_depth").apply({"params": s2d}, x)
        assert got.shape == want.shape == (2, size // 2, size // 2, cout)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_space_to_depth_inverts_depth_to_space():
    h = jax.random.normal(jax.random.key(0), (2, 3, 4, 12))
    np.testing.assert_array_equal(space_to_depth(depth_to_space(h, 2), 2), h)
    with pytest.raises(ValueError, match="not divisible by block"):
        space_to_depth(jnp.zeros((1, 7, 8, 1)), 2)
    with pytest.raises(ValueError, match="downsample must be one of"):
        Downsample2x(4, "pool").init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))


class _FlaxGroupNormThen(nn.Module):
    """flax's GroupNorm followed by an activation (the reference for ``GroupNorm(activation=...)``)."""
    num_groups: int
    activation: object = None

    @nn.compact
    def __call__(self, x):
        y = nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-6, name="norm")(x)
        return y if self.activation is None else self.activation(y)


@pytest.mark.parametrize("activation", [None, nn.swish], ids=["plain", "swish"])
@pytest.mark.parametrize("shape,groups", [((3, 6, 5, 16), 8), ((4, 7, 32), 32), ((3, 10), 5)])
def test_group_norm_equals_flax_group_norm(shape, groups, activation):
    """Same parameter tree, values and gradients (w.r.t. input and parameters) as flax's GroupNorm (followed
    by the activation, where one is fused in); the output of every (example, group) has mean 0 and variance
    var / (var + eps) before the affine map."""
    x = 3.0 * jax.random.normal(jax.random.key(0), shape) + 1.5
    ours, ref = gnn.GroupNorm(num_groups=groups, activation=activation), _FlaxGroupNormThen(groups, activation)
    params = ours.init(jax.random.key(1), x)
    ref_shapes = jax.tree.map(jnp.shape, ref.init(jax.random.key(1), x))["params"]["norm"]
    assert jax.tree.map(jnp.shape, params)["params"] == ref_shapes
    if activation is None:
        y = jax.jit(ours.apply)(params, x).reshape(shape[0], -1, groups, shape[-1] // groups)
        var = np.asarray(x, np.float64).reshape(y.shape).var(axis=(1, 3))
        np.testing.assert_allclose(y.mean(axis=(1, 3)), 0.0, atol=1e-5)
        np.testing.assert_allclose(y.var(axis=(1, 3)), var / (var + 1e-6), rtol=1e-4)

    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(2), p.shape), params)
    models = ((ours, params), (ref, {"params": {"norm": params["params"]}}))

    @jax.jit
    def value_and_grads(x):
        loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))  # noqa: E731
        return [(m.apply(p, x), jax.grad(loss(m), (0, 1))(p, x)) for m, p in models]

    (y, grads), (y_ref, grads_ref) = value_and_grads(x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)
    # forward mode too (its own tangent rule, which reverse mode transposes): jvp in x and the parameters,
    # and the second derivative (the ODE likelihood's divergence differentiates through it)
    dx = jax.random.normal(jax.random.key(4), shape)
    dp = jax.tree.map(lambda p: jax.random.normal(jax.random.key(3), p.shape), params)
    jvps = [jax.jit(lambda p, x, m=m, t=t: jax.jvp(m.apply, (p, x), (t, dx)))(p, x)
            for (m, p), t in zip(models, (dp, {"params": {"norm": dp["params"]}}))]
    np.testing.assert_allclose(jvps[0][1], jvps[1][1], rtol=1e-4, atol=1e-4)

    def squared_jvp(m, p):
        return lambda x: jnp.sum(jax.jvp(lambda u: jnp.sin(m.apply(p, u)), (x,), (dx,))[1] ** 2)

    hvp = [jax.jit(jax.grad(squared_jvp(m, p)))(x) for m, p in models]
    np.testing.assert_allclose(hvp[0], hvp[1], rtol=1e-3, atol=1e-3)


def test_group_norm_with_activation_keeps_only_its_input_for_the_backward_pass():
    """The fused norm + activation saves x and the [B, C] statistics for reverse mode, no full-size copy;
    the activation applied after the norm saves three more (the normalised x and the activation's two)."""
    import contextlib
    import io

    from jax.ad_checkpoint import print_saved_residuals

    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 8))

    def full_size_residuals(f, params):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            print_saved_residuals(f, params, x)
        return [line for line in out.getvalue().splitlines() if line.startswith("f32[2,5,5,8]")]

    fused, plain = gnn.GroupNorm(num_groups=4, activation=nn.swish), gnn.GroupNorm(num_groups=4)
    params = fused.init(jax.random.key(1), x)
    saved = full_size_residuals(fused.apply, params)
    assert len(saved) == 1 and "from the argument" in saved[0], saved
    assert len(full_size_residuals(lambda p, x: nn.swish(plain.apply(p, x)), params)) == 4


def test_group_norm_rejects_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match="num_groups=4"):
        gnn.GroupNorm(num_groups=4).init(jax.random.key(0), jnp.ones((2, 3, 3, 6)))
