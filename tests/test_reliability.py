"""Faults: SIGKILL mid-run then rerun == uninterrupted (bitwise on CPU); SIGTERM writes a checkpoint and
exits cleanly, also during the final evaluation; a corrupted or incompatible checkpoint is refused, not
overwritten; --restart starts over; each class of bad input fails before training, naming the value."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from subprocess_env import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "experiments/configs/realnvp_toy.py"
ARGS = [f"--config={CONFIG}:smoke", "--config.train.num_steps=600", "--config.train.checkpoint_every=20",
        "--config.train.log_every=20"]


def _run(workdir, *extra):
    r = subprocess.run([sys.executable, "-m", "experiments.train", *ARGS, f"--workdir={workdir}", *extra],
                       cwd=ROOT, env=subprocess_env(devices=1), capture_output=True, text=True, timeout=600)
    return r


def _start(workdir):
    return subprocess.Popen([sys.executable, "-m", "experiments.train", *ARGS, f"--workdir={workdir}"], cwd=ROOT,
                            env=subprocess_env(devices=1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(proc, workdir, min_step=40, timeout=180):
    ckpt = os.path.join(workdir, "checkpoints")
    t0 = time.time()
    while time.time() - t0 < timeout:
        steps = [int(d) for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else []
        if steps and max(steps) >= min_step:
            return max(steps)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("full"))
    r = _run(wd)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.load(open(os.path.join(wd, "summary.json")))


def _metrics_without_timing(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in rows]


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, uninterrupted):
    wd = str(tmp_path)
    proc = _start(wd)
    _wait_for_checkpoint(proc, wd)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.communicate()
    summary_path = os.path.join(wd, "summary.json")
    assert not os.path.exists(summary_path)
    r = _run(wd)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = json.load(open(summary_path))
    assert resumed["resumed_from"] is not None and resumed["steps"] == uninterrupted["steps"]
    assert resumed["params_checksum"] == uninterrupted["params_checksum"]  # bitwise on CPU
    assert resumed["eval"] == uninterrupted["eval"]


def test_sigterm_writes_checkpoint_and_exits_cleanly(tmp_path, uninterrupted):
    wd = str(tmp_path)
    proc = _start(wd)
    _wait_for_checkpoint(proc, wd, min_step=20)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "SIGTERM received: checkpoint written at step" in err
    step = int(err.split("checkpoint written at step ")[1].split(";")[0])
    assert str(step) in os.listdir(os.path.join(wd, "checkpoints"))
    r = _run(wd)
    assert r.returncode == 0 and f"from step {step}" in r.stdout
    assert json.load(open(os.path.join(wd, "summary.json")))["params_checksum"] == uninterrupted["params_checksum"]


def _smoke(num_steps, **model):
    from experiments.configs import realnvp_toy

    c = realnvp_toy.get_config("smoke")
    c.train.num_steps = num_steps
    c.model.update(model)
    return c


def test_corrupted_checkpoint_is_refused_not_overwritten(tmp_path):
    from experiments.run import train_and_evaluate
    from gen_jax.train import CheckpointError

    wd = str(tmp_path)
    train_and_evaluate(_smoke(20), wd, progress=False)
    victims = []
    for root, _, files in os.walk(os.path.join(wd, "checkpoints", "20")):
        for f in files:
            p = os.path.join(root, f)
            if "state" in root and os.path.getsize(p) > 0:
                victims.append(p)
                with open(p, "r+b") as fh:
                    fh.truncate(os.path.getsize(p) // 2)
    assert victims
    before = {p: os.path.getsize(p) for p in victims}
    with pytest.raises(CheckpointError, match="unreadable.*--restart"):
        train_and_evaluate(_smoke(30), wd, progress=False)
    assert {p: os.path.getsize(p) for p in victims} == before  # untouched
    assert train_and_evaluate(_smoke(24), wd, restart=True, progress=False).summary["resumed_from"] is None


def test_incompatible_checkpoint_names_the_mismatch(tmp_path):
    from experiments.run import train_and_evaluate
    from gen_jax.train import CheckpointError

    wd = str(tmp_path)
    train_and_evaluate(_smoke(10), wd, progress=False)
    with pytest.raises(CheckpointError, match="does not match the state this config builds(.|\n)*missing"):
        train_and_evaluate(_smoke(20, num_layers=3), wd, progress=False)


def test_sigterm_during_final_evaluation_is_reported_and_rerun_evaluates(tmp_path, monkeypatch, capsys):
    import experiments.run as run

    wd = str(tmp_path)
    real_build = run.build_task

    def build_that_is_killed_while_evaluating(config, data):
        task = real_build(config, data)

        def evaluate(*args):
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would, in the middle of the evaluation
            time.sleep(5)  # the handler runs at once; reaching the next line would mean it did not
            return task.evaluate(*args)

        return dataclasses.replace(task, evaluate=evaluate)

    monkeypatch.setattr(run, "build_task", build_that_is_killed_while_evaluating)
    handler_before = signal.getsignal(signal.SIGTERM)
    result = run.train_and_evaluate(_smoke(12), wd, progress=False)
    assert result.interrupted and result.summary["steps"] == 12
    assert "SIGTERM received during the final evaluation" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(wd, "summary.json"))
    assert "12" in os.listdir(os.path.join(wd, "checkpoints"))
    assert signal.getsignal(signal.SIGTERM) is handler_before  # handler restored
    monkeypatch.setattr(run, "build_task", real_build)
    again = run.train_and_evaluate(_smoke(12), wd, progress=False)
    assert not again.interrupted and again.summary["resumed_from"] == 12
    assert again.summary["params_checksum"] == result.summary["params_checksum"]
    assert json.load(open(os.path.join(wd, "summary.json")))["eval"]


def _named(name, **overrides):
    import importlib

    c = importlib.import_module(f"experiments.configs.{name}").get_config("smoke")
    for key, value in overrides.items():
        section, leaf = key.split("__")
        c[section][leaf] = value
    return c


# One case per class of bad input: each must fail before any training step, naming the value.
BAD_INPUT = {
    "learning rate <= 0": (("realnvp_toy", {"optim__learning_rate": 0.0}), "config.optim.learning_rate = 0.0"),
    "T <= 0": (("ddpm_toy", {"objective__num_timesteps": 0}), "steps T must be a positive int; got 0"),
    "beta outside (0, 1)": (("ddpm_toy", {"objective__beta_end": 1.5}), r"\(0, 1\)"),
    "batch not divisible by devices": (("realnvp_toy", {"data__batch_size": 6}),
                                       "batch size 6 is not divisible by the number of devices 4"),
    "image shape vs flow levels": (("glow_mnist", {"model__num_levels": 3}),
                                   r"\(28, 28, 1\) must have H and W divisible by 8 \(3 squeezes: num_levels=3\)"),
    "image shape vs U-Net levels": (("ddpm_mnist", {"model__ch_mult": (1, 2, 4, 8)}),
                                    r"28x28 must be divisible by .* = 8 \(ch_mult=\(1, 2, 4, 8\)\)"),
    "dataset missing offline": (("glow_mnist", {"data__data_dir": "EMPTY"}), "'mnist' .*is not prepared in"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_fails_before_training_and_names_the_value(case, tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from experiments import run

    (name, overrides), match = BAD_INPUT[case]
    overrides = {k: (str(tmp_path / "empty") if v == "EMPTY" else v) for k, v in overrides.items()}
    config = _named(name, **overrides)
    monkeypatch.setattr(run, "fit", lambda *a, **k: pytest.fail("training started despite bad input"))
    wd = tmp_path / "run"
    if config.data.name == "mnist" and "data__data_dir" not in overrides:
        with tfds.testing.mock_data(num_examples=64), pytest.raises((ValueError, FileNotFoundError), match=match):
            run.train_and_evaluate(config, str(wd), progress=False)
    else:
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            run.train_and_evaluate(config, str(wd), progress=False)
    assert not (wd / "checkpoints").exists() or not os.listdir(wd / "checkpoints")
