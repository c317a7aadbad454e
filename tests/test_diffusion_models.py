"""Denoisers: the DDPM CIFAR-10 U-Net has 35.7M parameters; fresh denoisers output 0 (zero-init);
shapes, class conditioning with a null label, dropout only in training, input validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gen_jax.diffusion as gd

TINY = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), norm_groups=4, dropout=0.5)
ONE_LEVEL = dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), norm_groups=4, dropout=0.5)


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_cifar10_unet_has_ddpm_parameter_count():
    """Ho et al. (2020): ch=128, ch_mult=(1,2,2,2), 2 res blocks, attention at 16x16 -> 35.7M params."""
    net = gd.UNet()  # the defaults are the CIFAR-10 model
    shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.ones((1,), jnp.int32))
    n = _count(shapes["params"])
    assert 35.6e6 < n < 35.8e6, n


def _perturb(params, seed=0, scale=0.05):
    """params + scale * N(0, 1) noise (numpy: no per-leaf compilation)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: p + scale * jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)


def test_unet_zero_init_shapes_and_conditioning(key):
    net = gd.UNet(num_classes=3, **ONE_LEVEL)  # one level keeps compilation short; resampling: below
    x = jax.random.normal(key, (2, 8, 8, 3))
    t = jnp.array([1, 500])
    label, null = jnp.array([0, 2]), jnp.full((2,), 3)
    params = jax.jit(net.init)(jax.random.key(1, impl="rbg"), x, t, label)["params"]

    @jax.jit
    def outputs(params):
        cat = lambda *a: jnp.concatenate(a)  # noqa: E731
        ev = net.apply({"params": params}, cat(x, x, x), cat(t, t, t + 1), cat(label, null, null))
        return ev.reshape(3, *x.shape), net.apply({"params": params}, x, t, None)

    ev, _ = outputs(params)
    np.testing.assert_array_equal(ev, 0.0)  # zero-initialised output conv
    (with_label, with_null, later_t), no_label = outputs(_perturb(params))
    assert with_label.shape == x.shape
    np.testing.assert_allclose(no_label, with_null, atol=1e-5)  # label=None is the null label
    assert not np.allclose(with_label, with_null, atol=1e-4)  # the label matters
    assert not np.allclose(later_t, with_null, atol=1e-4)  # the timestep matters


def test_resblock_dropout_only_in_training(key):
    block = gd.ResBlock(8, dropout=0.5, norm_groups=4)
    x, temb = jax.random.normal(key, (4, 4, 4, 8)), jax.random.normal(key, (4, 16))
    params = _perturb(jax.jit(block.init)(jax.random.key(1, impl="rbg"), x, temb)["params"])

    @jax.jit
    def run(params, dropout_key):
        ev = block.apply({"params": params}, x, temb, False)
        tr = block.apply({"params": params}, jnp.concatenate([x, x]), jnp.concatenate([temb, temb]), True,
                         rngs={"dropout": dropout_key})
        return ev, tr.reshape(2, *x.shape)

    ev, (tr1, tr2) = run(params, jax.random.key(2, impl="rbg"))
    ev2, _ = run(params, jax.random.key(3, impl="rbg"))
    np.testing.assert_array_equal(ev, ev2)  # eval mode is deterministic
    assert not np.allclose(tr1, ev, atol=1e-4) and not np.allclose(tr1, tr2, atol=1e-4)


def test_unet_input_validation():
    net = gd.UNet(**TINY)
    with pytest.raises(ValueError, match="divisible"):
        jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 7, 7, 1)), jnp.ones((1,), jnp.int32))
    with pytest.raises(ValueError, match=r"t of shape \[B\]"):
        jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((2, 8, 8, 1)), jnp.ones((3,), jnp.int32))
    with pytest.raises(ValueError, match="norm_groups"):
        jax.eval_shape(gd.UNet(ch=6, ch_mult=(1,), attn_resolutions=(), norm_groups=4).init,
                       jax.random.key(0), jnp.zeros((1, 4, 4, 1)), jnp.ones((1,), jnp.int32))


def test_unet_with_resampling_shapes(key):
    """Three levels on 28x28 (28 -> 14 -> 7 -> 14 -> 28), attention at 7x7; two levels on 8x8."""
    net = gd.UNet(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,), norm_groups=4)
    shapes = jax.eval_shape(net.init, key, jnp.zeros((2, 28, 28, 1)), jnp.ones((2,), jnp.int32))
    out = jax.eval_shape(net.apply, shapes, jnp.zeros((2, 28, 28, 1)), jnp.ones((2,), jnp.int32))
    assert out.shape == (2, 28, 28, 1)
    assert "AttentionBlock_0" in shapes["params"] and "Downsample_1" in shapes["params"]
    shapes = jax.eval_shape(gd.UNet(**TINY).init, key, jnp.zeros((2, 8, 8, 3)), jnp.ones((2,), jnp.int32))
    assert shapes["params"]["conv_out"]["kernel"].shape == (3, 3, 8, 3)


def test_mlp_denoiser_zero_init_and_time_dependence(key):
    net = gd.MLPDenoiser(hidden=32, num_blocks=2, time_dim=16)
    x = jax.random.normal(key, (5, 2))
    t = jnp.arange(1, 6) * 10
    params = jax.jit(net.init)(jax.random.key(1, impl="rbg"), x, t)["params"]
    apply = jax.jit(net.apply)
    np.testing.assert_array_equal(apply({"params": params}, x, t), 0.0)
    p = _perturb(params)
    a, b = apply({"params": p}, x, t), apply({"params": p}, x, t + 1)
    assert a.shape == (5, 2) and not np.allclose(a, b)
    # Class conditioning: label=None is the null label (index num_classes).
    cnet = gd.MLPDenoiser(hidden=32, num_blocks=1, time_dim=16, num_classes=4)
    cp = _perturb(jax.jit(cnet.init)(jax.random.key(2, impl="rbg"), x, t, jnp.zeros(5, jnp.int32))["params"])
    capply = jax.jit(cnet.apply)
    np.testing.assert_allclose(capply({"params": cp}, x, t, None), capply({"params": cp}, x, t, jnp.full(5, 4)))
    assert not np.allclose(capply({"params": cp}, x, t, jnp.zeros(5, jnp.int32)), capply({"params": cp}, x, t, None))


def test_timestep_embedding_values():
    emb = gd.timestep_embedding(jnp.array([0, 1, 999]), 8)
    assert emb.shape == (3, 8)
    np.testing.assert_allclose(emb[0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)
    freqs = 10_000.0 ** (-np.arange(4) / 3)  # geometric from 1 to 1/max_period
    np.testing.assert_allclose(emb[1], np.concatenate([np.sin(freqs), np.cos(freqs)]), atol=1e-6)
    with pytest.raises(ValueError, match="even"):
        gd.timestep_embedding(jnp.array([1]), 7)
