"""Faults: SIGKILL mid-run then rerun == uninterrupted (bitwise on CPU); SIGTERM writes a checkpoint and
exits cleanly; a corrupted or incompatible checkpoint is refused, not overwritten; --restart starts over."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "experiments/configs/realnvp_toy.py"
ARGS = [f"--config={CONFIG}:smoke", "--config.train.num_steps=600", "--config.train.checkpoint_every=20",
        "--config.train.log_every=20"]


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")


def _run(workdir, *extra):
    r = subprocess.run([sys.executable, "-m", "experiments.train", *ARGS, f"--workdir={workdir}", *extra],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    return r


def _start(workdir):
    return subprocess.Popen([sys.executable, "-m", "experiments.train", *ARGS, f"--workdir={workdir}"],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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
