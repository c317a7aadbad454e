"""Shared layers: the sub-pixel upsampler represents the stride-2 transposed convolutions exactly."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax.nn import Upsample2x, depth_to_space


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
