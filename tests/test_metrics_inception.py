"""The FID Inception-v3: architecture against the published network, the weight converter, the batched
multi-device feature extractor, and (where PyTorch and pytorch-fid are installed) agreement with
pytorch-fid's own module to float32 precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from gen_jax.metrics import frechet_distance_from_features
from gen_jax.metrics import inception as inc
from gen_jax.train.parallel import make_mesh


def test_parameter_count_is_the_published_networks():
    # torchvision's Inception-v3 has 27,161,264 parameters with its auxiliary head (3,326,696) and its
    # 1000-way classifier (2,049,000): 21,785,568 up to pool3. The FID network adds a 1008-way classifier
    # (2048 * 1008 + 1008): 23,850,960, the "23.9M" of the FID variant. pytorch-fid's module counts the same.
    assert inc.num_parameters(with_logits=False) == 27_161_264 - 3_326_696 - 2_049_000 == 21_785_568
    assert inc.num_parameters() == 21_785_568 + 2048 * 1008 + 1008 == 23_850_960
    shapes = traverse_util.flatten_dict(inc.variable_shapes(), sep="/")
    assert shapes["params/Conv2d_1a_3x3/conv/kernel"].shape == (3, 3, 3, 32)
    assert shapes["params/Mixed_6b/branch7x7_2/conv/kernel"].shape == (1, 7, 128, 128)
    assert shapes["params/Mixed_7c/branch3x3dbl_3b/conv/kernel"].shape == (3, 1, 384, 384)
    assert shapes["params/fc/kernel"].shape == (2048, 1008)
    # 94 convolutions, each with a batch norm (running mean and variance)
    assert sum(k.endswith("/conv/kernel") for k in shapes) == 94
    assert sum(k.startswith("batch_stats/") for k in shapes) == 2 * 94


def _random_variables(seed=0):
    """Random weights with random batch-norm statistics and affine terms (so every mapping is exercised)."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(inc.variable_shapes())
    out = {}
    for k, s in flat.items():
        if k[-1] == "kernel":
            fan_in = int(np.prod(s.shape[:-1]))
            out[k] = rng.normal(0, np.sqrt(2.0 / fan_in), s.shape).astype(np.float32)
        elif k[-1] in ("scale", "var"):
            out[k] = rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
        else:
            out[k] = rng.normal(0, 0.2, s.shape).astype(np.float32)
    return traverse_util.unflatten_dict(out)


def _as_torch_state_dict(variables):
    """The inverse of the converter, written independently: Flax names/layouts -> pytorch-fid's."""
    leaf = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
            ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}
    sd = {}
    for k, v in traverse_util.flatten_dict(variables).items():
        v = np.asarray(v)
        v = v.transpose(3, 2, 0, 1) if v.ndim == 4 else (v.T if v.ndim == 2 else v)
        sd[".".join(k[1:-1] + (leaf[k[0], k[-1]],))] = v
        if k[0] == "batch_stats" and k[-1] == "mean":
            sd[".".join(k[1:-1] + ("num_batches_tracked",))] = np.array(0)
    return sd


def test_converter_maps_every_torch_entry_and_refuses_another_network(tmp_path):
    variables = _random_variables()
    sd = _as_torch_state_dict(variables)
    assert "Mixed_5b.branch_pool.bn.running_var" in sd and sd["fc.weight"].shape == (1008, 2048)
    got = inc.convert_state_dict(sd)
    want = traverse_util.flatten_dict(variables)
    have = traverse_util.flatten_dict(got)
    assert want.keys() == have.keys()
    assert all(np.array_equal(want[k], have[k]) for k in want)
    # round trip through the .npz the evaluator loads
    path = inc.save_weights(str(tmp_path / "w.npz"), got)
    loaded = traverse_util.flatten_dict(inc.load_weights(path))
    assert all(np.array_equal(want[k], np.asarray(loaded[k])) for k in want)

    with pytest.raises(ValueError, match="1 missing"):
        inc.convert_state_dict({k: v for k, v in sd.items() if k != "Mixed_6a.branch3x3.conv.weight"})
    with pytest.raises(ValueError, match="another shape"):
        inc.convert_state_dict({**sd, "fc.weight": np.zeros((1000, 2048), np.float32)})
    with pytest.raises(ValueError, match="unexpected entry"):
        inc.convert_state_dict({**sd, "AuxLogits.fc.stddev": np.zeros(())})
    with pytest.raises(ValueError, match="non-finite"):
        inc.convert_state_dict({**sd, "fc.bias": np.full(1008, np.nan, np.float32)})


def test_missing_or_damaged_weights_say_what_to_do(tmp_path):
    for path in (None, str(tmp_path / "absent.npz")):
        with pytest.raises(FileNotFoundError, match=inc.TORCH_WEIGHTS_FILE) as e:
            inc.load_weights(path)
        assert "python -m gen_jax.metrics.inception" in str(e.value)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="unreadable"):
        inc.load_weights(str(bad))
    other = tmp_path / "other.npz"
    np.savez(other, **{"params/fc/kernel": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="does not hold the FID Inception-v3"):
        inc.load_weights(str(other))


def test_preprocess_is_bilinear_with_half_pixel_centres_and_repeats_grey():
    # a 2x2 grey image upsampled to 4x4: half-pixel centres put output pixel i at input coordinate
    # (i + 0.5) / 2 - 0.5, clamped at the borders: weights (1, 0), (0.75, 0.25), (0.25, 0.75), (0, 1)
    img = np.array([[0.0, 1.0], [0.5, 0.25]], np.float32)[None, :, :, None]
    out = np.asarray(inc.preprocess(jnp.asarray(img), size=4))
    w = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    expected = 2.0 * (w @ img[0, :, :, 0] @ w.T) - 1.0
    assert out.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(out[0, :, :, 0], expected, atol=1e-6)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    img8 = (img * 255).astype(np.uint8)
    u8 = np.asarray(inc.preprocess(jnp.asarray(img8), size=None))
    np.testing.assert_allclose(u8[0, :, :, 1], 2.0 * img8[0, :, :, 0] / 255 - 1.0, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[B, H, W, 1 or 3\]"):
        inc.preprocess(jnp.zeros((2, 8, 8, 2)))


def test_features_are_per_image_on_any_number_of_devices_and_fid_of_a_set_with_itself_is_zero():
    # 75 x 75 is the smallest input the network takes; the FID protocol resizes to 299 (same program)
    variables = _random_variables()
    images = np.random.default_rng(1).integers(0, 256, (7, 75, 75, 3), dtype=np.uint8)
    one = inc.InceptionFeatures(variables, batch_size=8, size=None, mesh=make_mesh(jax.devices()[:1]))
    pool, logits = one(images)
    assert pool.shape == (7, 2048) and logits.shape == (7, 1008) and np.all(np.isfinite(pool))
    np.testing.assert_allclose(logits, pool @ variables["params"]["fc"]["kernel"] + variables["params"]["fc"]["bias"],
                               rtol=1e-4, atol=1e-4)
    # the batch split over every device (4 in the tests), the last batch padded: the same features
    many = inc.InceptionFeatures(variables, batch_size=3, size=None)
    assert many.batch_size == 4 and many.mesh.devices.size == 4
    pool_many, _ = many(images[i:i + 2] for i in range(0, 7, 2))  # a stream of chunks
    np.testing.assert_allclose(pool_many, pool, rtol=1e-5, atol=1e-5)
    # an image's features do not depend on its batch (batch norm uses its running statistics)
    pool_perm, _ = one(images[::-1])
    np.testing.assert_allclose(pool_perm, pool[::-1], rtol=1e-5, atol=1e-5)
    assert frechet_distance_from_features(pool, pool) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance_from_features(pool[:4], pool[3:]) > 1e-3


def test_matches_pytorch_fid_to_float32_precision(tmp_path):
    """pytorch-fid's FID Inception (optional: needs torch and pytorch-fid) with the same random weights and
    images: pool3 and logits agree to float32 round-off, through the resize up (32 -> 299) and down; the
    command line converts a saved ``.pth``."""
    torch = pytest.importorskip("torch")
    pi = pytest.importorskip("pytorch_fid.inception")
    variables = _random_variables(seed=3)
    sd = {k: torch.tensor(v) for k, v in _as_torch_state_dict(variables).items()}
    torch.save(sd, tmp_path / inc.TORCH_WEIGHTS_FILE)
    inc.main([str(tmp_path / inc.TORCH_WEIGHTS_FILE), str(tmp_path / "inception_fid.npz")])
    converted = traverse_util.flatten_dict(inc.load_weights(str(tmp_path / "inception_fid.npz")))
    assert all(np.array_equal(v, converted[k]) for k, v in traverse_util.flatten_dict(variables).items())
    original = pi.load_state_dict_from_url
    pi.load_state_dict_from_url = lambda *a, **k: sd  # the state dict instead of the download
    try:
        ref = pi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
    finally:
        pi.load_state_dict_from_url = original
    ext = inc.InceptionFeatures(variables, batch_size=4)
    rng = np.random.default_rng(4)
    for shape in ((3, 32, 32, 3), (2, 333, 317, 3)):
        x = rng.uniform(0, 1, shape).astype(np.float32)
        with torch.no_grad():
            want = ref(torch.tensor(x.transpose(0, 3, 1, 2)))[0][:, :, 0, 0].numpy()
        pool, logits = ext(x)
        np.testing.assert_allclose(pool, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        fc = sd["fc.weight"].numpy()
        np.testing.assert_allclose(logits, want @ fc.T + sd["fc.bias"].numpy(), rtol=1e-4,
                                   atol=1e-5 * np.abs(logits).max())
