"""Runs on the user's own data through the runner: 2-D points in a .npy and a folder of images train,
checkpoint, evaluate and record what they read; a resumed run on other data is refused, the same data
elsewhere resumes."""

import importlib
import json

import numpy as np
import pytest
from PIL import Image

from experiments import run
from gen_jax.train import CheckpointError


def _smoke(name, data, **overrides):
    c = importlib.import_module(f"experiments.configs.{name}").get_config("smoke")
    c.data.name = str(data)
    for key, value in overrides.items():
        section, leaf = key.split("__")
        c[section][leaf] = value
    return c


def _ring(n, seed=0):
    rng = np.random.default_rng(seed)
    angle = rng.integers(0, 8, n) * (np.pi / 4)
    return (2 * np.stack([np.cos(angle), np.sin(angle)], 1) + 0.05 * rng.normal(size=(n, 2))).astype(np.float32)


def _losses(workdir):
    return [r["loss"] for r in map(json.loads, open(workdir / "metrics.jsonl")) if "loss" in r]


def test_a_flow_trains_on_points_from_a_npy_and_resumes_only_on_the_same_data(tmp_path):
    np.save(tmp_path / "points.npy", _ring(4000))
    config = _smoke("realnvp_toy", tmp_path / "points.npy", train__num_steps=100, train__log_every=20,
                    train__checkpoint_every=50, data__num_eval=400, optim__learning_rate=3e-3,
                    optim__schedule="constant")
    wd = tmp_path / "run"
    result = run.train_and_evaluate(config, str(wd), progress=False)
    summary = json.load(open(wd / "summary.json"))
    assert config.eval.evaluators == ("nll",) and config.eval.figures == ()  # the defaults for points
    fp = summary["data_fingerprint"]
    assert fp["train"]["examples"] == 3600 and fp["test"]["examples"] == 400 and fp["train"]["shape"] == [2]
    losses = _losses(wd)
    assert losses[-1] < losses[0] - 0.25, losses  # it learns the points (3.77 -> 3.35 nats)
    assert np.isfinite(summary["eval"]["nll_nats"]) and (wd / "samples.png").stat().st_size > 1000
    # Stopped at step 50 and resumed: the same parameters, bit for bit, as the uninterrupted run.
    half = tmp_path / "half"
    run.train_and_evaluate(_smoke("realnvp_toy", tmp_path / "points.npy", train__num_steps=50, train__log_every=10,
                                  data__num_eval=400, optim__learning_rate=3e-3, optim__schedule="constant"),
                           str(half), progress=False)
    resumed = run.train_and_evaluate(config, str(half), progress=False)
    assert resumed.summary["resumed_from"] == 50
    assert resumed.summary["params_checksum"] == result.summary["params_checksum"]
    # The same content under another path resumes; other content is refused before training.
    (tmp_path / "moved").mkdir()
    np.save(tmp_path / "moved" / "points.npy", _ring(4000))
    again = _smoke("realnvp_toy", tmp_path / "moved" / "points.npy", train__num_steps=120, data__num_eval=400,
                   optim__schedule="constant")
    assert run.prepare(again, str(wd)).resumed_from == 100 == result.summary["steps"]
    np.save(tmp_path / "other.npy", _ring(4000, seed=1))
    other = _smoke("realnvp_toy", tmp_path / "other.npy", train__num_steps=120, optim__schedule="constant")
    with pytest.raises(CheckpointError, match="data_sha256=.* but this run has data_sha256="):
        run.prepare(other, str(wd))


def test_a_vae_trains_on_a_folder_of_images_of_mixed_sizes_resized(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("circles", "squares"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(40):
            size = 20 if i % 2 else 24
            img = np.zeros((size, size), np.uint8)
            c, r = size // 2, rng.integers(4, 8)
            yy, xx = np.mgrid[:size, :size]
            mask = (np.hypot(yy - c, xx - c) < r) if label == "circles" else (np.maximum(abs(yy - c), abs(xx - c)) < r)
            img[mask] = 255
            Image.fromarray(img).save(tmp_path / "imgs" / label / f"{i}.png")
    config = _smoke("vae_mnist", tmp_path / "imgs", data__image_size=16, data__batch_size=16,
                    data__eval_batch_size=8, train__num_steps=30, train__log_every=10)
    wd = tmp_path / "run"
    prepared = run.prepare(config, str(wd))
    assert prepared.data.shape == (16, 16, 1) and prepared.data.num_classes == 2
    assert prepared.data.num_train == 72  # 80 images, 10 % held out
    run.train_and_evaluate(config, str(wd), progress=False)
    summary = json.load(open(wd / "summary.json"))
    assert np.isfinite(summary["eval"]["nll_nats"]) and "reconstructions.png" in summary["figures"]
    losses = _losses(wd)
    assert losses[-1] < losses[0], losses


def test_a_missing_file_is_refused_naming_it_and_the_flag(tmp_path):
    config = _smoke("realnvp_toy", tmp_path / "nope.npy")
    with pytest.raises(ValueError, match=r"nope.npy: no such file or folder \(--config.data.name="):
        run.prepare(config, str(tmp_path / "run"))
