"""The ``inception`` evaluator: FID/IS/KID of samples against a reference split whose statistics are cached
by what they depend on (data content, split, weights)."""

import os

import numpy as np
import pytest
from ml_collections import config_dict

from experiments.evaluators.inception import InceptionMetrics, quantise
from experiments.tasks.base import Context, DataSpec
from gen_jax.data.sources import ArraySource
from gen_jax.metrics import inception as inc


def _weights(tmp_path, seed):
    rng = np.random.default_rng(seed)
    from flax import traverse_util
    flat = {}
    for k, s in traverse_util.flatten_dict(inc.variable_shapes()).items():
        if k[-1] == "kernel":
            flat[k] = rng.normal(0, np.sqrt(2.0 / np.prod(s.shape[:-1])), s.shape).astype(np.float32)
        elif k[-1] in ("scale", "var"):
            flat[k] = np.ones(s.shape, np.float32)
        else:
            flat[k] = np.zeros(s.shape, np.float32)
    return inc.save_weights(str(tmp_path / f"inception_{seed}.npz"), traverse_util.unflatten_dict(flat))


def _context(images, options):
    train = ArraySource(images, np.zeros(len(images), np.int32), name="toy_images")
    data = DataSpec(kind="image", shape=images.shape[1:], name="toy_images", num_classes=1, train=train,
                    fingerprint={"train": train.fingerprint(), "test": train.fingerprint()})
    return Context(model=None, data=data, options=options, params=[None], model_state=[None], sample=None,
                   batches=lambda: iter([{"x": images[:2]}, {"x": images[2:]}]), num_batches=2)


def test_fid_of_the_reference_with_itself_is_zero_and_its_statistics_are_cached(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    options = config_dict.ConfigDict(dict(inception_weights=_weights(tmp_path, 0), inception_num_samples=4,
                                          inception_reference="train", inception_batch_size=4,
                                          inception_stats_dir=str(tmp_path / "stats")))
    ev = InceptionMetrics(options, _context(images, options))
    out = ev(None, None, images.astype(np.float32) / 255.0)  # the reference itself, as samples in [0, 1]
    assert out["fid"] == pytest.approx(0.0, abs=1e-6)
    assert abs(out["kid"]) < 1e-3 and np.isfinite(out["inception_score"]) and out["inception_score"] >= 1.0
    other = ev(None, None, images[::-1, ::-1].astype(np.float32) / 255.0)  # flipped upside down
    assert other["fid"] > 1e-3
    cached = os.listdir(tmp_path / "stats")
    assert len(cached) == 1 and cached[0].startswith("toy_images_train_")

    # a second run reads the cache and never recomputes the reference; other weights get their own file
    ev2 = InceptionMetrics(options, _context(images, options))
    ev2._reference_images = lambda: pytest.fail("the reference statistics were recomputed")
    np.testing.assert_array_equal(ev2.reference_statistics()[0], ev.reference_statistics()[0])
    options.inception_weights = _weights(tmp_path, 1)
    assert InceptionMetrics(options, _context(images, options))._cache_file()[0] != ev._cache_file()[0]


def test_missing_weights_stop_the_run_before_it_trains(tmp_path):
    images = np.zeros((4, 32, 32, 3), np.uint8)
    options = config_dict.ConfigDict(dict(inception_weights=str(tmp_path / "nope.npz")))
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        InceptionMetrics(options, _context(images, options))
    options = config_dict.ConfigDict(dict(inception_weights=None, inception_reference="valid"))
    with pytest.raises(ValueError, match="inception_reference"):
        InceptionMetrics(options, _context(images, options))


def test_quantise_rounds_like_a_png_writer():
    np.testing.assert_array_equal(quantise(np.array([-0.1, 0.0, 0.4 / 255, 0.6 / 255, 1.0, 1.2])),
                                  [0, 0, 0, 1, 255, 255])


def test_given_weights_add_the_evaluator_to_image_runs_only():
    from experiments.configs import common, ddpm_cifar10
    config = ddpm_cifar10.get_config("smoke")
    common.resolve_eval(config, "image", 10)
    assert "inception" not in config.eval.evaluators and config.eval.inception_num_samples == 64
    config = ddpm_cifar10.get_config("smoke")
    config.eval.inception_weights = "inception_fid.npz"
    common.resolve_eval(config, "image", 10)
    assert config.eval.evaluators[-1] == "inception"
