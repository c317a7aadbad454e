"""Shared layers: the sub-pixel upsampler and the space-to-depth downsampler represent the stride-2
(transposed) convolutions exactly."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax.nn import Downsample2x, Upsample2x, depth_to_space, space_to_depth


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
