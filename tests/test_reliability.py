"""Faults: SIGKILL mid-run then rerun == uninterrupted (bitwise on CPU); SIGTERM writes a checkpoint and
exits cleanly, also during the final evaluation; a corrupt newest checkpoint is moved aside and the run
resumes from the newest intact one (bitwise the same result); an incompatible checkpoint is refused and
the refused command changes nothing; --restart starts over; each class of bad input fails before
training, naming the value; a diverged run never reports success."""

import json
import math
import re
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from subprocess_env import subprocess_env

from gen_jax.train import TIMING_KEYS

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
def uninterrupted_run(tmp_path_factory):
    """(workdir, completed process) of the uninterrupted reference run (do not modify the workdir)."""
    wd = str(tmp_path_factory.mktemp("full"))
    r = _run(wd)
    assert r.returncode == 0, r.stderr[-3000:]
    return wd, r


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run):
    return json.load(open(os.path.join(uninterrupted_run[0], "summary.json")))


def _copy(workdir, dest):
    shutil.copytree(workdir, dest)
    return str(dest)


def _snapshot(workdir):
    """Every file under workdir with its bytes' digest (what a refused command must leave unchanged)."""
    import hashlib

    return {os.path.relpath(os.path.join(r, f), workdir): hashlib.sha256(open(os.path.join(r, f), "rb").read()).hexdigest()
            for r, _, fs in os.walk(workdir) for f in fs}


def _strict_json(path):
    def refuse(name):
        raise ValueError(f"{path} holds {name}: not JSON")

    with open(path) as f:
        return [json.loads(line, parse_constant=refuse) for line in f] if path.endswith(".jsonl") \
            else json.loads(f.read(), parse_constant=refuse)


def _metrics_without_timing(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


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


def test_corrupt_newest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_intact_one(tmp_path, uninterrupted_run,
                                                                                       uninterrupted):
    wd = _copy(uninterrupted_run[0], tmp_path / "run")
    os.remove(os.path.join(wd, "summary.json"))
    newest = os.path.join(wd, "checkpoints", "600")
    data = max((os.path.join(r, f) for r, _, fs in os.walk(newest) for f in fs if f"{os.sep}d" in r),
               key=os.path.getsize)
    with open(data, "r+b") as f:  # one changed byte in the array data
        f.seek(os.path.getsize(data) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
    damaged = open(data, "rb").read()
    r = _run(wd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "warning: checkpoint step 600 is corrupt (file state/" in r.stderr
    assert "resuming" in r.stdout and "from step 580 (the newest intact checkpoint)" in r.stdout
    moved = os.path.join(wd, "checkpoints", "corrupt", "600", os.path.relpath(data, newest))
    assert open(moved, "rb").read() == damaged  # kept for inspection, not overwritten
    summary = json.load(open(os.path.join(wd, "summary.json")))
    assert summary["corrupt_checkpoints_skipped"] == [600] and summary["resumed_from"] == 580
    assert summary["params_checksum"] == uninterrupted["params_checksum"]  # bitwise the uninterrupted result


def test_every_checkpoint_corrupt_is_refused_naming_them_changing_nothing_and_restart_starts_over(
        tmp_path, uninterrupted_run):
    wd = _copy(uninterrupted_run[0], tmp_path / "run")
    steps = sorted(int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit())
    assert steps == [560, 580, 600]
    for step in steps:  # each save "cut off" before its seal
        os.remove(os.path.join(wd, "checkpoints", str(step), "gen_jax_seal.json"))
    before = _snapshot(wd)
    line = _one_error_line(_run(wd))
    assert re.search(r"every checkpoint in .* is corrupt: step 600: .*no seal.* \| step 580: .* \| step 560: .*"
                     r"--restart to start over", line), line
    assert _snapshot(wd) == before  # refused: nothing moved, nothing overwritten
    r = _run(wd, "--restart", "--config.train.num_steps=20")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.load(open(os.path.join(wd, "summary.json")))
    assert summary["resumed_from"] is None and summary["steps"] == 20
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["20"]


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
    real_evaluate = run.evaluators_lib.evaluate

    def evaluate_and_be_killed(*args):
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would, in the middle of the evaluation
        time.sleep(5)  # the handler runs at once; reaching the next line would mean it did not
        return real_evaluate(*args)

    monkeypatch.setattr(run.evaluators_lib, "evaluate", evaluate_and_be_killed)
    handler_before = signal.getsignal(signal.SIGTERM)
    result = run.train_and_evaluate(_smoke(12), wd, progress=False)
    assert result.interrupted and result.summary["steps"] == 12
    assert "SIGTERM received during the final evaluation" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(wd, "summary.json"))
    assert "12" in os.listdir(os.path.join(wd, "checkpoints"))
    assert signal.getsignal(signal.SIGTERM) is handler_before  # handler restored
    monkeypatch.setattr(run.evaluators_lib, "evaluate", real_evaluate)
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


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=cwd, env=subprocess_env(devices=1),
                          capture_output=True, text=True, timeout=600)


def _one_error_line(r, code=2):
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    return lines[0]


def _read_only_dir(tmp_path):
    """A folder this process cannot create anything in (root ignores permissions: /sys then)."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return str(ro / "run")
    if os.path.isdir("/sys") and _cannot_mkdir("/sys"):
        return f"/sys/gen_jax_test_{os.getpid()}"
    # the refusal itself is checked everywhere by test_a_workdir_without_write_access_is_refused_in_process
    pytest.skip("no read-only folder available to root here")


def _cannot_mkdir(parent):
    try:
        os.mkdir(os.path.join(parent, f"gen_jax_probe_{os.getpid()}"))
    except OSError:
        return True
    os.rmdir(os.path.join(parent, f"gen_jax_probe_{os.getpid()}"))
    return False


SMOKE = "--config=realnvp_toy:smoke"
# Each bad command line: exit code 2, one "error:" line naming the problem, nothing written.
BAD_COMMAND = {
    "unknown key": ([SMOKE, "--config.train.num_stepz=5"], "no key train.num_stepz; did you mean train.num_steps?"),
    "misspelt config name": (["--config=realnvp_tyo"], "did you mean realnvp_toy\\? available configs: .*vae_toy"),
    "config path missing": (["--config=experiments/configs/nope.py"], "no such file or config; available configs"),
    "config argument": (["--config=realnvp_toy:smokee"], "unknown config argument 'smokee'"),
    "value of the wrong type": ([SMOKE, "--config.train.num_steps=abc"], "num_steps=abc.*invalid literal"),
    "invalid value": ([SMOKE, "--config.optim.optimizer=adamx"], "config.optim.optimizer = 'adamx' is invalid"),
    "no workdir": ([SMOKE], "--config and --workdir are required"),
    "workdir is a file": ([SMOKE, "--workdir=FILE"], "is a file, not a folder"),
    "workdir under a file": ([SMOKE, "--workdir=FILE/run"], "cannot be created: .* is a file"),
    "read-only workdir": ([SMOKE, "--workdir=READONLY"], "not writable|cannot write to workdir"),
}


@pytest.mark.parametrize("case", sorted(BAD_COMMAND))
def test_bad_command_line_is_one_error_line_exit_2_and_writes_nothing(case, tmp_path):
    args, match = BAD_COMMAND[case]
    (tmp_path / "file").write_text("not a folder")
    workdir = str(tmp_path / "run")
    subs = {"FILE": str(tmp_path / "file"), "READONLY": _read_only_dir(tmp_path) if case == "read-only workdir" else ""}
    args = [a.replace("FILE", subs["FILE"]).replace("READONLY", subs["READONLY"]) for a in args]
    if not any(a.startswith("--workdir") for a in args) and case != "no workdir":
        args.append(f"--workdir={workdir}")
    before = _snapshot(str(tmp_path))
    line = _one_error_line(_cli(*args))
    assert re.search(match, line), line
    assert _snapshot(str(tmp_path)) == before and not os.path.exists(workdir)


def test_a_workdir_without_write_access_is_refused_in_process(tmp_path, monkeypatch):
    """The writability check, on any machine and user: a folder whose access check denies writing is refused
    with its name, and nothing is created under it."""
    from experiments import run

    parent = tmp_path / "locked"
    parent.mkdir()
    real_access = os.access
    monkeypatch.setattr(run.os, "access", lambda path, mode: False if os.path.abspath(path) == str(parent)
                        else real_access(path, mode))
    with pytest.raises(run.WorkdirError, match=f"workdir .*run is not writable \\({re.escape(str(parent))} is "
                                                f"read-only"):
        run.check_workdir(str(parent / "sub" / "run"))
    assert os.listdir(parent) == []


def test_refused_resume_changes_nothing(tmp_path, uninterrupted_run):
    wd = _copy(uninterrupted_run[0], tmp_path / "run")
    before = _snapshot(wd)
    line = _one_error_line(_cli("--config=vae_toy:smoke", f"--workdir={wd}"))
    assert "was written with family='flow' but this run has family='vae'" in line and "--restart" in line
    assert _snapshot(wd) == before  # config.json still says flow; nothing else touched


def test_dry_run_checks_everything_and_writes_nothing(tmp_path, uninterrupted_run):
    wd = _copy(uninterrupted_run[0], tmp_path / "run")
    before = _snapshot(wd)
    r = _cli(*ARGS, f"--workdir={wd}", "--dry_run")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "num_steps: 600" in r.stdout and "keep_checkpoints: 3" in r.stdout  # the resolved config
    assert "would resume from checkpoint step 600" in r.stdout and "nothing written" in r.stdout
    assert _snapshot(wd) == before
    fresh = tmp_path / "fresh"
    r = _cli(SMOKE, f"--workdir={fresh}", "--dry_run")
    assert r.returncode == 0 and "would start at step 0" in r.stdout and not fresh.exists()
    listing = _cli("--list_configs")
    assert listing.returncode == 0
    for name in ("realnvp_toy", "ddpm_mnist", "dcgan_mnist", "vae_conv_mnist", "glow_cifar10"):
        assert re.search(rf"^  {name} +\S", listing.stdout, re.M), listing.stdout


def test_off_a_terminal_progress_has_an_eta_and_the_final_evaluation_says_so(uninterrupted_run):
    out, err = uninterrupted_run[1].stdout, uninterrupted_run[1].stderr
    assert re.search(r"^step 20/600 .* elapsed=\dm\d\ds eta=\dm\d\ds$", out, re.M), out[:2000]
    assert "final evaluation ..." in err and re.search(r"evaluating: (\d+)/\1 done in", err)
    assert re.search(r"final evaluation done in [\d.]+ s", err)


DIVERGING = {
    "loss explodes": (["--config=realnvp_toy:smoke", "--config.optim.learning_rate=1e6"],
                      "the loss diverged: loss = .* more than 10000 x"),
    "updates skipped": (["--config=vae_toy:smoke", "--config.optim.learning_rate=1e3"],
                        "of the first 5 updates were skipped as non-finite, more than 0.05 of the run's 20 steps"),
}


@pytest.mark.parametrize("case", sorted(DIVERGING))
def test_diverged_run_exits_3_with_one_line_and_valid_json(case, tmp_path):
    args, match = DIVERGING[case]
    r = _cli(*args, f"--workdir={tmp_path}")
    line = _one_error_line(r, code=3)
    assert re.search(match, line), line
    assert "Try a lower learning rate" in line
    assert not (tmp_path / "summary.json").exists()
    rows = _strict_json(str(tmp_path / "metrics.jsonl"))  # NaN/inf written as null
    assert rows and all(math.isfinite(v) for row in rows for v in row.values() if v is not None)


def test_the_evaluation_at_the_last_step_is_the_final_one_and_a_non_finite_one_fails_the_run(tmp_path, monkeypatch):
    import experiments.run as run
    from gen_jax.train import DivergedError

    real_evaluate, calls = run.evaluators_lib.evaluate, []

    def evaluate_counting_with_nan_at_the_end(*args):
        calls.append(1)
        out = real_evaluate(*args)
        return {**out, "nll_nats": float("nan")} if len(calls) == 2 else out

    monkeypatch.setattr(run.evaluators_lib, "evaluate", evaluate_counting_with_nan_at_the_end)
    config = _smoke(20)
    config.train.eval_every = 10
    with pytest.raises(DivergedError, match="final evaluation is not finite \\(nll_nats = nan\\) after 20 steps"):
        run.train_and_evaluate(config, str(tmp_path), progress=False)
    assert len(calls) == 2  # at step 10, and at step 20, which is the final evaluation (not run again)
    rows = [r for r in _strict_json(str(tmp_path / "metrics.jsonl")) if "eval_num_examples" in r]
    assert [r["step"] for r in rows] == [10, 20] and rows[-1]["eval_nll_nats"] is None
    summary = _strict_json(str(tmp_path / "summary.json"))  # written, with null for NaN
    assert summary["eval"]["nll_nats"] is None and summary["steps"] == 20


def test_missing_dataset_message_has_no_false_tfds_note(tmp_path):
    from gen_jax.data import DatasetNotFoundError, load_tfds

    with pytest.raises(DatasetNotFoundError) as err:
        load_tfds("mnist", "train", str(tmp_path))
    msg = str(err.value)
    assert f"'mnist' (split 'train') is not prepared in {tmp_path}" in msg
    assert "TFRECORD" not in msg and "already prepared" not in msg and "--config" not in msg


def test_a_saved_classifier_of_another_dataset_is_refused_before_training(tmp_path, monkeypatch):
    import jax
    import jax.numpy as jnp
    import tensorflow_datasets as tfds

    from experiments import run
    from gen_jax.metrics import classifier

    params = classifier.ConvClassifier(num_classes=10).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    path = classifier.save_classifier(str(tmp_path / "clf.msgpack"), params, dataset="fashion_mnist")
    config = _named("dcgan_mnist")
    config.eval.classifier_path = path
    monkeypatch.setattr(run, "fit", lambda *a, **k: pytest.fail("training started despite bad input"))
    with tfds.testing.mock_data(num_examples=64), pytest.raises(ValueError, match="trained on 'fashion_mnist', "
                                                                                 "but this run evaluates 'mnist'"):
        run.train_and_evaluate(config, str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()
