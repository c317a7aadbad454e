"""GAN modules and the two-player loss functions: shapes, ranges, conditioning, spectral norm,
packing, preprocessing, and the loss factory's contract with the engine."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import gan


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_dcgan_shapes(shape):
    g, d = gan.DCGANGenerator(shape, base_features=8), gan.DCGANDiscriminator(shape, base_features=8)

    def run(key):
        g_params, d_params, stats = gan.init_gan(g, d, key, latent_dim=16, data_shape=shape)
        x = gan.generate(g, g_params, key, 3, latent_dim=16)
        return x, d.apply({"params": d_params}, x), stats

    x, logits, stats = jax.eval_shape(run, jax.random.key(0))  # shapes only: no compilation
    assert x.shape == (3,) + shape and logits.shape == (3,) and stats is None


def test_dcgan_range_and_per_example_independence():
    shape = (14, 14, 2)  # 7 * 2: the 28x28 layout with one doubling less, cheap on CPU
    g, d = gan.DCGANGenerator(shape, base_features=4), gan.DCGANDiscriminator(shape, base_features=4)
    g_params, d_params, _ = gan.init_gan(g, d, jax.random.key(0), latent_dim=8, data_shape=shape)

    @jax.jit
    def run(key):
        x = gan.generate(g, g_params, key, 3, latent_dim=8)
        d_apply = lambda v: d.apply({"params": d_params}, v)  # noqa: E731
        # D of each example alone, as a batch of one (vmap keeps the singleton batch per example).
        single = jax.vmap(lambda xi: d_apply(xi[None])[0])(x)
        return x, d_apply(x), single

    x, logits, single = run(jax.random.key(1))
    assert x.shape == (3,) + shape
    assert float(jnp.max(jnp.abs(x))) <= 1.0 and float(jnp.std(x)) > 0
    # D of a batch equals D of each example alone (needed for the per-example penalties).
    np.testing.assert_allclose(logits, single, rtol=1e-4, atol=1e-5)


def test_dcgan_rejects_bad_shapes():
    with pytest.raises(ValueError, match="7 \\* 2\\^k"):
        gan.DCGANGenerator((30, 30, 1)).init(jax.random.key(0), jnp.zeros((1, 4)))
    d = gan.DCGANDiscriminator((28, 28, 1), base_features=4)
    with pytest.raises(ValueError, match="expects images"):
        d.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))


def test_projection_conditioning():
    """logit(x, y) - logit(x, y') = <embed(y) - embed(y'), phi(x)>: labels matter, and with equal
    embeddings the logit no longer depends on the label."""
    d = gan.MLPDiscriminator(hidden=(16,), num_classes=3)
    x = jax.random.normal(jax.random.key(0), (4, 2))
    params = jax.jit(d.init)(jax.random.key(1), x, jnp.zeros(4, jnp.int32))["params"]
    d_apply = jax.jit(lambda p, y: d.apply({"params": p}, x, y))
    l0 = d_apply(params, jnp.zeros(4, jnp.int32))
    l1 = d_apply(params, jnp.ones(4, jnp.int32))
    assert float(jnp.max(jnp.abs(l0 - l1))) > 1e-3
    embed = params["_ProjectionHead_0"]["Embed_0"]["embedding"]
    same = jax.tree.map(lambda a: a, params)
    same["_ProjectionHead_0"]["Embed_0"]["embedding"] = jnp.broadcast_to(embed[:1], embed.shape)
    np.testing.assert_allclose(d_apply(same, jnp.zeros(4, jnp.int32)), d_apply(same, jnp.full(4, 2, jnp.int32)),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="needs labels"):
        d.apply({"params": params}, x)
    g = gan.MLPGenerator(hidden=(16,), num_classes=3)
    gp = jax.jit(g.init)(jax.random.key(2), jnp.zeros((4, 5)), jnp.zeros(4, jnp.int32))["params"]
    z = jax.random.normal(jax.random.key(3), (4, 5))
    g_apply = jax.jit(lambda y: g.apply({"params": gp}, z, y))
    assert float(jnp.max(jnp.abs(g_apply(jnp.zeros(4, jnp.int32)) - g_apply(jnp.ones(4, jnp.int32))))) > 1e-4


def test_spectral_norm_sigma_matches_svd_and_bounds_lipschitz():
    d = gan.MLPDiscriminator(hidden=(32, 32), spectral_norm=True)
    x = jax.random.normal(jax.random.key(0), (8, 2))
    variables = jax.jit(d.init)(jax.random.key(1), x)
    params, stats = variables["params"], variables["batch_stats"]
    update = jax.jit(lambda s: d.apply({"params": params, "batch_stats": s}, x, update_stats=True,
                                       mutable=["batch_stats"])[1]["batch_stats"])
    for _ in range(30):  # power iterations
        stats = update(stats)
    for layer in ("Dense_0", "Dense_1"):
        i = layer[-1]
        sigma = stats[f"SpectralNorm_{i}"][f"{layer}/kernel/sigma"]
        top = np.linalg.svd(np.asarray(params[layer]["kernel"]), compute_uv=False)[0]
        np.testing.assert_allclose(sigma, top, rtol=1e-3)
    # Every layer has spectral norm 1 and LeakyReLU is 1-Lipschitz: ||grad_x D|| <= 1.
    pts = 3.0 * jax.random.normal(jax.random.key(2), (64, 2))
    grads = jax.jit(lambda p: gan.r1_penalty(lambda v: d.apply({"params": params, "batch_stats": stats}, v), p))(pts)
    assert float(jnp.max(grads)) <= 1.0 + 1e-3


def test_pack_and_preprocess():
    x = jnp.arange(12.0).reshape(6, 2)
    packed = gan.pack(x, 3)
    np.testing.assert_array_equal(packed, np.array([[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]], np.float32))
    img = jnp.arange(4 * 2 * 2 * 1.0).reshape(4, 2, 2, 1)
    packed = gan.pack(img, 2)
    assert packed.shape == (2, 2, 2, 2)
    np.testing.assert_array_equal(packed[1, :, :, 0], img[2, :, :, 0])
    np.testing.assert_array_equal(packed[1, :, :, 1], img[3, :, :, 0])
    with pytest.raises(ValueError, match="divisible"):
        gan.pack(x, 4)
    u8 = jnp.array([0, 255, 128], jnp.uint8)
    np.testing.assert_allclose(gan.preprocess(u8), [-1.0, 1.0, 128 / 127.5 - 1.0], atol=1e-6)
    np.testing.assert_array_equal(gan.preprocess(x), x)


def _toy_players(spectral_norm=False):
    g = gan.MLPGenerator(hidden=(16,))
    d = gan.MLPDiscriminator(hidden=(16,), spectral_norm=spectral_norm)
    return g, d, gan.init_gan(g, d, jax.random.key(0), latent_dim=3, data_shape=(2,))


def test_loss_fns_compute_the_seed_value_function():
    """With the minimax loss, d_loss = -V(D, G) on the very samples the step draws, and g_loss is
    the seed's E log(1 - D(G(z)))."""
    g, d, (g_params, d_params, _) = _toy_players()
    model = gan.GAN(g, d, latent_dim=3, loss="minimax")
    batch = {"x": jax.random.normal(jax.random.key(1), (8, 2))}
    rng = jax.random.key(2)
    params, state = {"g": g_params, "d": d_params}, {"g": {}, "d": {}}

    @jax.jit
    def run(rng):
        d_loss, (metrics, _) = model.d_loss(params, state, batch, rng)
        g_loss, _ = model.g_loss(params, state, batch, rng)
        # The same samples, drawn and scored independently of the factory.
        fake = gan.generate(g, g_params, jax.random.split(rng)[0], 8, latent_dim=3)
        v = gan.value_function(d.apply({"params": d_params}, batch["x"]), d.apply({"params": d_params}, fake))
        fake = gan.generate(g, g_params, rng, 8, latent_dim=3)
        expected = jnp.mean(jnp.log1p(-jax.nn.sigmoid(d.apply({"params": d_params}, fake))))
        return d_loss, metrics, g_loss, v, expected

    d_loss, metrics, g_loss, v, expected = run(rng)
    np.testing.assert_allclose(d_loss, -v, rtol=1e-5)
    np.testing.assert_allclose(metrics["d_value_nats"], v, rtol=1e-5)
    np.testing.assert_allclose(g_loss, expected, rtol=1e-5)


def test_loss_fns_penalties_and_images():
    shape = (8, 8, 1)  # 4 * 2: the 32x32 layout with two doublings less
    g, d = gan.DCGANGenerator(shape, base_features=4), gan.DCGANDiscriminator(shape, base_features=4)
    g_params, d_params, _ = gan.init_gan(g, d, jax.random.key(0), latent_dim=4, data_shape=shape)
    batch = {"x": jax.random.randint(jax.random.key(1), (4,) + shape, 0, 256).astype(jnp.uint8)}
    base = gan.GAN(g, d, latent_dim=4, loss="wasserstein")
    with_gp = gan.GAN(g, d, latent_dim=4, loss="wasserstein", gp_weight=10.0, r1_weight=2.0)
    rng, state = jax.random.key(3), {"g": {}, "d": {}}

    @jax.jit  # one compiled program for all three computations
    def run(d_params, g_params, batch):
        l0, _ = base.d_loss({"g": g_params, "d": d_params}, state, batch, rng)
        l1, (m1, _) = with_gp.d_loss({"g": g_params, "d": d_params}, state, batch, rng)
        r1 = gan.r1_penalty(lambda v: d.apply({"params": d_params}, v), gan.preprocess(batch["x"]))
        return l0, l1, m1, r1

    l0, l1, m1, r1 = run(d_params, g_params, batch)
    np.testing.assert_allclose(l1, l0 + 10.0 * m1["d_gp"] + 0.5 * 2.0 * m1["d_r1"], rtol=1e-4)
    np.testing.assert_allclose(m1["d_r1"], jnp.mean(r1), rtol=1e-4)


def test_gan_validates():
    g, d, _ = _toy_players()
    with pytest.raises(ValueError, match="loss must be one of"):
        gan.GAN(g, d, latent_dim=3, loss="vanilla")
    with pytest.raises(ValueError, match="packing"):
        gan.GAN(g, d, latent_dim=3, num_classes=10, pack_size=2)
    with pytest.raises(ValueError, match="n_critic"):
        gan.GAN(g, d, latent_dim=3, n_critic=0)


def test_public_api_is_importable():
    import gen_jax.gan as module

    assert sorted(module.__all__) == sorted(set(module.__all__))
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    assert set(gan.LOSS_KINDS) == {"minimax", "non_saturating", "hinge", "wasserstein", "least_squares"}


def test_subpixel_generator_has_the_dcgan_shapes():
    g = gan.DCGANGenerator((28, 28, 1), base_features=8, upsample="subpixel")
    params = jax.jit(g.init)(jax.random.key(0), jnp.zeros((2, 16)))
    out = jax.jit(g.apply)(params, jax.random.normal(jax.random.key(1), (3, 16)))
    assert out.shape == (3, 28, 28, 1) and float(jnp.max(jnp.abs(out))) <= 1.0
    with pytest.raises(ValueError, match="upsample must be one of"):
        gan.DCGANGenerator((28, 28, 1), upsample="nearest").init(jax.random.key(0), jnp.zeros((2, 16)))


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_space_to_depth_discriminator_has_the_dcgan_parameter_count(spectral_norm):
    """The space-to-depth D has the strided D's parameter count (a 2x2 conv on 4C channels holds a 4x4
    kernel on C) and gives one finite logit per image, also spectrally normalised."""
    kw = dict(base_features=8, spectral_norm=spectral_norm)
    x = jax.random.normal(jax.random.key(1), (3, 28, 28, 1))
    sizes = {}
    for kind in ("strided", "space_to_depth"):
        d = gan.DCGANDiscriminator((28, 28, 1), downsample=kind, **kw)
        variables = d.init(jax.random.key(0), x)
        sizes[kind] = sum(a.size for a in jax.tree.leaves(variables["params"]))
        out = d.apply(variables, x, mutable=["batch_stats"])[0] if spectral_norm else d.apply(variables, x)
        assert out.shape == (3,) and bool(jnp.all(jnp.isfinite(out)))
    assert sizes["strided"] == sizes["space_to_depth"]
