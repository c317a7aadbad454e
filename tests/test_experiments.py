"""End to end: every config validates; every smoke variant trains, checkpoints, samples and evaluates
(image datasets under tfds mock data); the CLI runs, resumes, and rejects bad input clearly; the
quickstart writes its panel and table."""

import importlib
import json
import os
import pkgutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from ml_collections import config_dict

import experiments.configs
from experiments import quickstart
from experiments.run import ConfigError, train_and_evaluate, validate_config
from subprocess_env import subprocess_env, xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(m.name for m in pkgutil.iter_modules(experiments.configs.__path__) if m.name != "common")
QUICKSTART_CONFIGS = {module for _, module, _ in quickstart.RUNS}


def _config(name, arg=None):
    return importlib.import_module(f"experiments.configs.{name}").get_config(arg)


def test_there_are_configs_for_every_family():
    families = {_config(n).family for n in CONFIGS}
    assert families <= {"flow", "diffusion", "vae", "gan"} and len(CONFIGS) >= 1


@pytest.mark.parametrize("name", CONFIGS)
def test_config_and_smoke_variant_validate(name):
    full, smoke = _config(name), _config(name, "smoke")
    validate_config(full)
    validate_config(smoke)
    assert smoke.train.num_steps <= full.train.num_steps


def _plain_none_leaves(node, prefix=""):
    """Keys whose value is a bare None: the CLI cannot override those (ml_collections needs a type)."""
    out = []
    for key, value in node._fields.items():
        if isinstance(value, config_dict.ConfigDict):
            out += _plain_none_leaves(value, f"{prefix}{key}.")
        elif value is None:
            out.append(prefix + key)
    return out


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_value_can_be_overridden_from_the_cli(name):
    for arg in (None, "smoke"):
        assert _plain_none_leaves(_config(name, arg)) == [], "use config_dict.placeholder(type) for optional values"


# Accelerator-sized models: their smoke runs compile large programs, so they run with -m slow.
SLOW_SMOKE = {"glow_cifar10", "realnvp_mnist", "ddpm_cifar10", "vae_conv_mnist", "dcgan_cifar10",
              "vdm_mnist", "fm_mnist",  # their U-Net paths: ddpm_mnist's smoke run (default) and the unit tests
              "dcgan_mnist"}  # 40 s; its players: tests/test_gan_models.py, the two-player run: gan_ring8's smoke run


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SMOKE else n
                                  for n in CONFIGS])
def test_smoke_run(name, tmp_path):
    config = _config(name, "smoke")
    if config.data.name in ("mnist", "fashion_mnist", "cifar10"):
        with tfds.testing.mock_data(num_examples=64):
            result = train_and_evaluate(config, str(tmp_path), progress=False)
    else:
        result = train_and_evaluate(config, str(tmp_path), progress=False)
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["steps"] == config.train.num_steps == result.summary["steps"]
    assert summary["eval"] and all(np.isfinite(v) for v in summary["eval"].values()), summary["eval"]
    assert os.path.getsize(tmp_path / "samples.png") > 1000
    assert len(open(tmp_path / "metrics.jsonl").readlines()) >= 1
    assert os.listdir(tmp_path / "checkpoints")
    ev = summary["eval"]
    if "diffusion_bpd" in ev and config.objective.get("process", "ddpm") == "ddpm":
        # the decades of t (discrete time) add up to the KL part of the bound
        decades = [v for k, v in ev.items() if k.startswith("kl_t")]
        assert len(decades) >= 1 and sum(decades) == pytest.approx(ev["diffusion_bpd"], rel=1e-5)


@pytest.mark.slow
def test_quickstart_main_job(tmp_path):
    summary = quickstart.run(str(tmp_path), scale=0.01)
    assert {r["config"] for r in summary["families"]} == QUICKSTART_CONFIGS & set(CONFIGS)
    for r in summary["families"]:
        assert r["modes"] is not None and 0 <= r["hq_percent"] <= 100
    assert os.path.getsize(tmp_path / "panel.png") > 10_000
    assert len(open(tmp_path / "metrics.jsonl").readlines()) == len(summary["families"])


def _cli(*args, env_extra=None):
    return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=ROOT,
                          env=subprocess_env(**(env_extra or {})),
                          capture_output=True, text=True, timeout=600)


CLI_CONFIG = "experiments/configs/realnvp_toy.py"


def test_cli_trains_and_resumes(tmp_path):
    wd = str(tmp_path / "run")
    r = _cli(f"--config={CLI_CONFIG}:smoke", f"--workdir={wd}", "--config.train.num_steps=10")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.load(open(os.path.join(wd, "summary.json")))["steps"] == 10
    r = _cli(f"--config={CLI_CONFIG}:smoke", f"--workdir={wd}", "--config.train.num_steps=16")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stdout and "from step 10" in r.stdout
    summary = json.load(open(os.path.join(wd, "summary.json")))
    assert summary["steps"] == 16 and summary["resumed_from"] == 10
    steps = [json.loads(line)["step"] for line in open(os.path.join(wd, "metrics.jsonl"))]
    assert steps == sorted(set(steps)) and steps[-1] == 16


def test_cli_rejects_bad_input(tmp_path):
    r = _cli(f"--config={CLI_CONFIG}:smoke", f"--workdir={tmp_path}", "--config.optim.learning_rate=-0.1")
    assert r.returncode == 2 and "config.optim.learning_rate = -0.1" in r.stderr and "> 0" in r.stderr
    r = _cli(f"--config={CLI_CONFIG}:smoke", f"--workdir={tmp_path}", "--config.optim.learning_rat=0.1")
    assert r.returncode != 0 and "learning_rat" in r.stderr
    r = _cli(f"--config={CLI_CONFIG}:smoke", f"--workdir={tmp_path}", "--config.data.batch_size=6",
             env_extra={"XLA_FLAGS": xla_flags(4)})
    assert r.returncode == 2 and "batch size 6 is not divisible by the number of devices 4" in r.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.parametrize("key, value, match", [
    ("optim.learning_rate", 0.0, "config.optim.learning_rate = 0.0"),
    ("train.num_steps", -5, "config.train.num_steps = -5"),
    ("data.name", "", "config.data.name = ''"),  # a misspelt name: tests/test_sources.py (did you mean)
    ("data.holdout", 1.5, r"config.data.holdout = 1.5 is invalid; expected a fraction in \(0, 1\)"),
    ("data.image_size", 0, "config.data.image_size = 0 is invalid"),
    ("optim.ema_decay", 1.0, r"config.optim.ema_decay = 1.0 is invalid; expected a number in \[0, 1\)"),
    ("replica_map", "pmap", r"config.replica_map = 'pmap' is invalid; expected one of \('auto', 'vmap', 'unroll'\)"),
])
def test_validate_config_names_the_bad_value(key, value, match):
    config = _config(CONFIGS[0], "smoke")
    *section, name = key.split(".")
    (config[section[0]] if section else config)[name] = value
    with pytest.raises(ConfigError, match=match):
        validate_config(config)


def test_config_replica_map_reaches_the_seeds_step():
    """config.replica_map decides how K seeds share the train step: unrolled, the program holds K times
    the one-seed step's matmuls; vmapped, each matmul once over all seeds (that both give the same
    numbers, and which way 'auto' takes: tests/test_train_engine.py)."""
    import jax

    from experiments.run import build_seeds
    from experiments.tasks.base import DataSpec
    from gen_jax.data import toy
    from gen_jax.train import equations

    data = DataSpec(kind="toy", shape=(2,), name="ring8", toy=toy.ring8())
    batch = {"x": np.zeros((64, 2), np.float32)}
    dots = {}
    for k, how in ((1, "auto"), (3, "unroll"), (3, "vmap")):
        config = _config("vae_toy", "smoke")
        config.num_seeds, config.replica_map = k, how
        seeds = build_seeds(config, data)
        state = jax.eval_shape(seeds.init, jax.random.key(0))
        dots[k, how] = sum(e.primitive.name == "dot_general" for e in equations(seeds.train_step, state, batch))
    assert dots[3, "unroll"] == 3 * dots[1, "auto"] and dots[3, "vmap"] == dots[1, "auto"] > 0, dots
