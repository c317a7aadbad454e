"""Data parallelism: the same steps on a 4-device mesh give the same parameters as on 1 device
(single-objective and two-player), and two processes joined with jax.distributed train, checkpoint
and resume a config while agreeing on the parameters."""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmark import CompileEvents
from gen_jax.data import toy
from gen_jax.train import (TrainState, TwoPlayerState, check_batch_size, keep_state_sharding, local_replica, make_mesh,
                           make_optimizer, make_train_step, make_two_player_step, replicate, shard_batch,
                           shard_state)
from subprocess_env import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TX = make_optimizer(learning_rate=1e-2)


def mlp_params(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
            for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def mlp(params, x):
    for i, layer in enumerate(params):
        x = x @ layer["w"] + layer["b"][None]
        if i < len(params) - 1:
            x = jnp.tanh(x)
    return x


def regression_loss(params, model_state, batch, rng):
    """A per-example loss reduced over the (sharded) batch: the mean must be taken globally."""
    x = batch["x"] + 0.01 * jax.random.normal(rng, batch["x"].shape)
    pred = mlp(params, x)
    loss = jnp.mean(jnp.sum((pred - jnp.flip(x, axis=1)) ** 2, axis=1))
    return loss, ({}, model_state)


def run_on(devices, make_state, step, num_steps=8):
    mesh = make_mesh(devices)
    state = replicate(make_state(), mesh)
    batches = toy.ToyBatches(toy.ring8(), 64, seed=0)
    for i in range(num_steps):
        state, _ = step(state, shard_batch(batches.batch_at(i), mesh))
    return jax.device_get(jax.tree.map(lambda x: x, state.params if hasattr(state, "params") else
                                       (state.g.params, state.d.params)))


def test_four_devices_equal_one_device_single_objective():
    assert jax.device_count() >= 4, "conftest forces 4 host devices"
    make_state = lambda: TrainState.create(params=mlp_params(jax.random.key(0), [2, 32, 2]), tx=TX,  # noqa: E731
                                           key=jax.random.key(1))
    step = make_train_step(regression_loss)
    one = run_on(jax.devices()[:1], make_state, step)
    four = run_on(jax.devices()[:4], make_state, step)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_four_devices_equal_one_device_two_player():
    assert jax.device_count() >= 4, "conftest forces 4 host devices"
    def d_loss(params, ms, batch, rng):
        dp, gp = params["d"], params["g"]
        fake = mlp(gp, jax.random.normal(rng, batch["x"].shape))
        return jnp.mean(jax.nn.softplus(-mlp(dp, batch["x"]))) + jnp.mean(jax.nn.softplus(mlp(dp, fake))), ({}, ms)

    def g_loss(params, ms, batch, rng):
        fake = mlp(params["g"], jax.random.normal(rng, batch["x"].shape))
        return jnp.mean(jax.nn.softplus(-mlp(params["d"], fake))), ({}, ms)

    def make_state():
        return TwoPlayerState(g=TrainState.create(params=mlp_params(jax.random.key(0), [2, 16, 2]), tx=TX,
                                                  key=jax.random.key(1)),
                              d=TrainState.create(params=mlp_params(jax.random.key(2), [2, 16, 1]), tx=TX,
                                                  key=jax.random.key(3)))

    step = make_two_player_step(d_loss, g_loss, n_critic=2)
    one = run_on(jax.devices()[:1], make_state, step)
    four = run_on(jax.devices()[:4], make_state, step)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_sharded_state_trains_like_the_replicated_one_and_stays_sharded():
    """FSDP: the big weights and their Adam moments live as 1/4 per device before and after each step,
    and the parameters match the replicated run's."""
    assert jax.device_count() >= 4, "conftest forces 4 host devices"
    mesh = make_mesh(jax.devices()[:4])
    make_state = lambda: TrainState.create(params=mlp_params(jax.random.key(0), [2, 128, 64, 2]), tx=TX,  # noqa: E731
                                           key=jax.random.key(1), ema_decay=0.9)
    batches = toy.ToyBatches(toy.ring8(), 64, seed=0)
    results = {}
    for name, place in (("replicated", replicate), ("sharded", lambda t, m: shard_state(t, m, min_size=1024))):
        state = place(make_state(), mesh)
        step = keep_state_sharding(make_train_step(regression_loss), state, mesh)
        state, _ = step(state, shard_batch(batches.batch_at(0), mesh))
        with CompileEvents() as events:
            for i in range(1, 8):
                state, _ = step(state, shard_batch(batches.batch_at(i), mesh))
            jax.block_until_ready(state)
        assert events.traces == events.compiles == 0  # the shardings never changed: compiled once
        results[name] = state
    big = results["sharded"].params[1]["w"]  # [128, 64]: 8192 elements >= min_size
    assert not big.is_fully_replicated and big.addressable_shards[0].data.shape == (32, 64)
    moments = [x for x in jax.tree.leaves(results["sharded"].opt_state) if getattr(x, "shape", ()) == (128, 64)]
    assert len(moments) >= 2 and not any(m.is_fully_replicated for m in moments)  # Adam's mu and nu
    assert not results["sharded"].ema_params[1]["w"].is_fully_replicated
    assert results["sharded"].params[0]["b"].is_fully_replicated  # 128 elements: below min_size
    assert results["replicated"].params[1]["w"].is_fully_replicated
    for a, b in zip(jax.tree.leaves(jax.device_get(local_replica(results["replicated"].params))),
                    jax.tree.leaves(jax.device_get(local_replica(results["sharded"].params)))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    full = local_replica(results["sharded"]).params[1]["w"]
    assert full.is_fully_replicated and full.shape == (128, 64) and len(full.devices()) == 1


def test_runner_with_shard_params_matches_replicated(tmp_path):
    from experiments.configs import realnvp_toy
    from experiments.run import train_and_evaluate

    summaries = []
    for shard in (False, True):
        c = realnvp_toy.get_config("smoke")
        c.train.num_steps = 10
        c.train.shard_params = shard
        summaries.append(train_and_evaluate(c, str(tmp_path / str(shard)), progress=False).summary)
    assert summaries[1]["steps"] == 10
    np.testing.assert_allclose(summaries[1]["params_checksum"], summaries[0]["params_checksum"], rtol=1e-5)
    for k, v in summaries[0]["eval"].items():
        np.testing.assert_allclose(summaries[1]["eval"][k], v, rtol=1e-4, atol=1e-4)


def _cli_summary(config, workdir, devices, *extra):
    r = subprocess.run([sys.executable, "-m", "experiments.train", f"--config={config}", f"--workdir={workdir}",
                        *extra], cwd=ROOT, env=subprocess_env(devices), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout[r.stdout.index("{"):])


# Two CLI runs in subprocesses each (37 s for the flow): slow. In the default run: the engine on four devices ==
# one (test_four_devices_equal_one_device_single_objective / _two_player) and the runner in-process on the
# suite's four devices, replicated == sharded (test_runner_with_shard_params_matches_replicated).
@pytest.mark.slow
@pytest.mark.parametrize("config", ["experiments/configs/realnvp_toy.py:smoke", "experiments/configs/gan_ring8.py:smoke"])
def test_family_trains_the_same_on_four_devices_as_on_one(config, tmp_path):
    """The real tasks (a flow; the GAN with its seeds vmapped) through the CLI: 4 devices == 1 device."""
    one = _cli_summary(config, tmp_path / "one", 1, "--config.train.num_steps=8")
    four = _cli_summary(config, tmp_path / "four", 4, "--config.train.num_steps=8")
    assert one["steps"] == four["steps"] == 8
    np.testing.assert_allclose(four["params_checksum"], one["params_checksum"], rtol=1e-5)


def test_batch_size_must_divide_device_count():
    mesh = make_mesh(jax.devices()[:4]) if jax.device_count() >= 4 else make_mesh()
    n = mesh.devices.size
    check_batch_size(8 * n, mesh)
    if n > 1:
        with pytest.raises(ValueError, match=f"batch size {8 * n + 1} is not divisible by the number of devices {n}"):
            check_batch_size(8 * n + 1, mesh)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(config, workdir, steps, *extra):
    port = _free_port()
    env = subprocess_env(devices=1)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "experiments.train", f"--config={config}", f"--workdir={workdir}",
         f"--config.train.num_steps={steps}", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={i}", *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(out[out.index("{"):]) for out, _ in outs]


TWO_PROCESS_CONFIG = "experiments/configs/realnvp_toy.py:smoke"


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume(tmp_path):
    wd = str(tmp_path / "run")
    first = _two_processes(TWO_PROCESS_CONFIG, wd, 6)
    assert first[0]["params_checksum"] == first[1]["params_checksum"]
    assert first[0]["steps"] == 6
    second = _two_processes(TWO_PROCESS_CONFIG, wd, 10)
    assert [s["resumed_from"] for s in second] == [6, 6] and second[0]["steps"] == 10
    assert second[0]["params_checksum"] == second[1]["params_checksum"] != first[0]["params_checksum"]


@pytest.mark.slow
def test_two_processes_with_sharded_params_agree_with_replicated(tmp_path):
    """FSDP across processes: the (256 x 256) coupling weights are split between the two processes;
    sampling and evaluation gather them; the result equals the replicated run's."""
    wide = ("--config.model.hidden=(256, 256)",)
    sharded = _two_processes(TWO_PROCESS_CONFIG, str(tmp_path / "fsdp"), 6, "--config.train.shard_params=True",
                             *wide)
    replicated = _two_processes(TWO_PROCESS_CONFIG, str(tmp_path / "ddp"), 6, *wide)
    assert sharded[0]["params_checksum"] == sharded[1]["params_checksum"]
    np.testing.assert_allclose(sharded[0]["params_checksum"], replicated[0]["params_checksum"], rtol=1e-5)
    resumed = _two_processes(TWO_PROCESS_CONFIG, str(tmp_path / "fsdp"), 8, "--config.train.shard_params=True",
                             *wide)
    assert [r["resumed_from"] for r in resumed] == [6, 6] and resumed[0]["steps"] == 8
