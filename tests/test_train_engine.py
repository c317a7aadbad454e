"""The engine's guarantees: loss falls, traced once, vmap == separate runs, checkpoint round trip,
interrupted-then-resumed == uninterrupted, non-finite guard, two-player step."""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax.data import toy
from gen_jax.precision import DynamicLossScale
from gen_jax.train import (TIMING_KEYS, CheckpointError, Checkpointer, DivergedError, MetricsWriter, NonFiniteError,
                           TrainState, TwoPlayerState, convolves, equations, fit, global_norm, json_dumps, make_optimizer,
                           make_train_step, make_two_player_step, map_replicas, read_metrics)


def gaussian_nll(params, model_state, batch, rng):
    """NLL of N(mu, exp(2 s) I) with a noisy term so the rng matters (the one objective signature of
    gen_jax.model: ``(params, model_state, batch, rng) -> (loss, (metrics, model_state))``)."""
    x = batch["x"] + 0.01 * jax.random.normal(rng, batch["x"].shape)
    mu, log_s = params["mu"], params["log_s"]
    nll = jnp.sum(0.5 * ((x - mu[None]) / jnp.exp(log_s)[None]) ** 2 + log_s[None] + 0.5 * jnp.log(2 * jnp.pi), -1)
    return jnp.mean(nll), ({"nll_nats": jnp.mean(nll)}, model_state)


TX = make_optimizer(learning_rate=0.05)


def make_state(seed=0, ema=0.0, loss_scale=None):
    params = {"mu": jnp.array([1.5, -1.0]), "log_s": jnp.zeros(2)}
    return TrainState.create(params=params, tx=TX, key=jax.random.key(seed), ema_decay=ema, loss_scale=loss_scale)


def batches_of(dist, bs=64):
    return toy.ToyBatches(dist, bs, seed=0)


def test_loss_falls_and_reaches_closed_form():
    dist = toy.ring8()
    state, _ = fit(make_state(), make_train_step(gaussian_nll), batches_of(dist), num_steps=300,
                   log_every=50, progress=False)
    # The ML Gaussian fit to the ring: mean 0, variance radius^2/2 + std^2 per coordinate.
    np.testing.assert_allclose(state.params["mu"], 0.0, atol=0.25)
    np.testing.assert_allclose(jnp.exp(2 * state.params["log_s"]), 2.0 + 0.02**2, rtol=0.2)


def test_step_traces_once():
    traces = []

    def loss_fn(params, model_state, batch, rng):
        traces.append(1)
        return gaussian_nll(params, model_state, batch, rng)

    step = make_train_step(loss_fn)
    state = make_state()
    b = batches_of(toy.ring8())
    for i in range(5):
        state, _ = step(state, b.batch_at(i))
    assert len(traces) == 1


@pytest.mark.parametrize("replica_map", ["vmap", "unroll"])
def test_vmap_replicas_equal_separate_runs(replica_map):
    k = 3
    b = batches_of(toy.ring8())
    step = make_train_step(gaussian_nll)
    singles = []
    for seed in range(k):
        s = make_state(seed)
        for i in range(10):
            s, _ = step(s, b.batch_at(i))
        singles.append(s.params)
    rep = jax.tree.map(lambda *xs: jnp.stack(xs), *[make_state(seed) for seed in range(k)])
    vstep = make_train_step(gaussian_nll, replicas=True, replica_map=replica_map)
    for i in range(10):
        rep, metrics = vstep(rep, b.batch_at(i))
    assert metrics["loss"].shape == (k,)
    for r in range(k):
        for name in ("mu", "log_s"):
            np.testing.assert_allclose(rep.params[name][r], singles[r][name], rtol=1e-5, atol=1e-6)
    assert not np.allclose(singles[0]["mu"], singles[1]["mu"])  # the seeds really differ


def test_map_replicas_unrolls_convolutions_and_vmaps_the_rest():
    """'auto' repeats a convolving function once per replica (K convolutions, each with the one-replica
    kernel: no grouped convolution) and batches a matmul-only one (one batched dot); every way gives
    the same result as calling the function on each replica."""
    k = 3
    w = jax.random.normal(jax.random.key(0), (k, 3, 3, 2, 4))  # per-replica HWIO kernels
    x = jax.random.normal(jax.random.key(1), (5, 2, 8, 8))  # NCHW, shared
    dn = ("NCHW", "HWIO", "NCHW")
    net = lambda w, x: jnp.tanh(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)).mean((1, 2, 3))  # noqa: E731
    expected = np.stack([net(w[i], x) for i in range(k)])
    for how, n_conv in (("auto", k), ("unroll", k), ("vmap", 1)):
        mapped = map_replicas(net, (0, None), how)
        convs = [e for e in equations(mapped, w, x) if e.primitive.name == "conv_general_dilated"]
        assert len(convs) == n_conv, how
        assert how == "vmap" or all(e.params["feature_group_count"] == 1 for e in convs)
        np.testing.assert_allclose(jax.jit(mapped)(w, x), expected, rtol=1e-5, atol=1e-6)
    mlp = lambda w, x: jnp.tanh(x @ w).sum()  # noqa: E731
    dots = [e for e in equations(map_replicas(mlp, (0, None)), w[:, 0, 0], x[:, :, 0, 0])
            if e.primitive.name == "dot_general"]
    assert len(dots) == 1  # one dot over all replicas


def test_convolves_sees_nested_programs():
    x, w = jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1))
    conv = lambda x: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
    assert convolves(conv, x)
    assert convolves(jax.checkpoint(conv), x)
    assert convolves(lambda x: jax.lax.scan(lambda c, _: (conv(c), None), x, None, length=2)[0], x)
    assert convolves(lambda x: jax.lax.cond(x.sum() > 0, conv, lambda x: x, x), x)
    assert not convolves(lambda x: jnp.tanh(x.reshape(4, 4) @ jnp.ones((4, 4))), x)


def test_replica_map_must_be_known():
    with pytest.raises(ValueError, match="replica_map='pmap' is not one of"):
        make_train_step(gaussian_nll, replicas=True, replica_map="pmap")
    with pytest.raises(ValueError, match="at least one argument with a replica axis"):
        map_replicas(gaussian_nll, (None, None))


def test_checkpoint_round_trip(tmp_path):
    state = make_state(ema=0.9)
    step = make_train_step(gaussian_nll)
    b = batches_of(toy.ring8())
    for i in range(3):
        state, _ = step(state, b.batch_at(i))
    ck = Checkpointer(str(tmp_path / "ckpt"), run_info={"family": "test"})
    ck.save(3, state)
    restored, info = ck.restore(make_state(seed=7, ema=0.9))
    assert info["family"] == "test"
    for a, c in zip(jax.tree.leaves(jax.random.key_data(state.key)), jax.tree.leaves(jax.random.key_data(restored.key))):
        np.testing.assert_array_equal(a, c)
    for a, c in zip(jax.tree.leaves(state.replace(key=0)), jax.tree.leaves(restored.replace(key=0))):
        np.testing.assert_array_equal(a, c)


def test_data_wait_fraction_is_the_share_of_time_spent_waiting_for_batches(tmp_path):
    step = make_train_step(gaussian_nll, donate=False)
    source = batches_of(toy.ring8())

    def slow(start):  # a pipeline that takes 30 ms per batch, around a step of well under 1 ms
        for batch in source(start):
            time.sleep(0.03)
            yield batch

    jax.block_until_ready(step(make_state(), next(source(0))))  # compiled before: not counted as stepping time
    fit(make_state(), step, slow, num_steps=20, workdir=str(tmp_path), log_every=10, progress=False)
    waits = [r["data_wait_fraction"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))]
    assert len(waits) == 2 and all(0.5 < w <= 1.0 for w in waits), waits


@pytest.mark.parametrize("loss_scale", [None, 2.0**15], ids=["plain", "loss_scale"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, loss_scale):
    # with a loss scale (float16's) that doubles every 4 steps: resuming must restore its state too
    scale = (lambda: None) if loss_scale is None else (lambda: DynamicLossScale.create(initial=loss_scale, period=4))
    step = make_train_step(gaussian_nll, donate=False)
    b = batches_of(toy.ring8())
    full, _ = fit(make_state(ema=0.5, loss_scale=scale()), step, b, num_steps=30, workdir=str(tmp_path / "a"),
                  log_every=5, progress=False)
    ck = Checkpointer(str(tmp_path / "b" / "ckpt"))
    # First run "dies" after 17 steps, having checkpointed at step 10.
    fit(make_state(ema=0.5, loss_scale=scale()), step, b, num_steps=17, workdir=str(tmp_path / "b"), checkpointer=ck,
        checkpoint_every=10, log_every=5, progress=False)
    ck2 = Checkpointer(str(tmp_path / "b" / "ckpt"))
    ck2._manager.delete(17)  # lost with the process: only step 10 survives
    resumed, _ = ck2.restore(make_state(seed=3, ema=0.5, loss_scale=scale()))
    assert int(resumed.step) == 10
    resumed, _ = fit(resumed, step, b, num_steps=30, workdir=str(tmp_path / "b"), checkpointer=ck2,
                     log_every=5, progress=False)
    for a, c in zip(jax.tree.leaves(full.replace(key=0)), jax.tree.leaves(resumed.replace(key=0))):
        np.testing.assert_array_equal(a, c)
    ma = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(str(tmp_path / "a" / "metrics.jsonl"))]
    mb = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(str(tmp_path / "b" / "metrics.jsonl"))]
    assert ma == mb and len(ma) == 6
    if loss_scale is not None:  # 30 finite updates: doubled 7 times
        assert float(resumed.loss_scale.scale) == loss_scale * 2**7 and int(resumed.loss_scale.good_steps) == 2


def test_nonfinite_updates_are_skipped_and_counted():
    def loss_fn(params, model_state, batch, rng):
        loss, aux = gaussian_nll(params, model_state, batch, rng)
        bad = batch["poison"] > 0
        return jnp.where(bad, jnp.nan, loss), aux

    step = make_train_step(loss_fn)
    state = make_state()
    b = batches_of(toy.ring8())
    before = None
    for i in range(6):
        batch = dict(b.batch_at(i), poison=jnp.asarray(float(i in (2, 3))))
        if i == 2:
            before = jax.tree.map(np.asarray, state.params)
        state, metrics = step(state, batch)
        if i == 3:
            np.testing.assert_array_equal(state.params["mu"], before["mu"])  # two updates skipped
            assert int(metrics["skipped"]) == 1 and int(state.nonfinite_consecutive) == 2
    assert int(state.nonfinite_total) == 2 and int(state.nonfinite_consecutive) == 0
    assert np.all(np.isfinite(state.params["mu"]))


def test_fit_stops_after_too_many_consecutive_nonfinite(tmp_path):
    step = make_train_step(lambda p, ms, b, r: (jnp.nan * jnp.sum(p["mu"]), ({}, ms)))
    ck = Checkpointer(str(tmp_path / "ckpt"))
    with pytest.raises(NonFiniteError, match="10 consecutive non-finite.*no checkpoint was written"):
        fit(make_state(), step, batches_of(toy.ring8()), num_steps=50, checkpointer=ck, log_every=5,
            max_nonfinite=10, max_skipped_fraction=1.0, progress=False)
    assert ck.latest_step() is None  # nothing written over a good checkpoint


def _poisoned_nll(every: int):
    """gaussian_nll, NaN at every ``every``-th step (a rare bad batch)."""
    def loss_fn(params, model_state, batch, rng):
        loss, aux = gaussian_nll(params, model_state, batch, rng)
        return jnp.where(batch["step"] % every == every - 1, jnp.nan, loss), aux
    return loss_fn


def _counting_batches(dist):
    b = batches_of(dist)

    def gen(start):
        for i in range(start, 10**9):
            yield dict(b.batch_at(i), step=jnp.asarray(i))
    return gen


def test_fit_fails_a_run_that_skips_more_than_the_allowed_fraction(tmp_path):
    # One update in 10 skipped: allowed at max_skipped_fraction=0.2, refused at 0.05, where the run stops
    # at the first log point whose skipped count exceeds 5% of the run's 100 steps (6 of the first 60).
    step = make_train_step(_poisoned_nll(10))
    state, _ = fit(make_state(), step, _counting_batches(toy.ring8()), num_steps=100, log_every=10,
                   max_skipped_fraction=0.2, progress=False)
    assert int(state.nonfinite_total) == 10
    ck = Checkpointer(str(tmp_path / "ckpt"))
    with pytest.raises(NonFiniteError, match="6 of the first 60 updates were skipped.*more than 0.05 of the run's "
                                             "100 steps.*the checkpoint of step 50 is kept"):
        fit(make_state(), step, _counting_batches(toy.ring8()), num_steps=100, log_every=10, checkpointer=ck,
            checkpoint_every=25, progress=False)
    assert ck.all_steps() == [25, 50]


def test_fit_stops_a_diverging_loss_and_reports_an_unclipped_grad_norm(tmp_path):
    # Plain gradient descent on -x^2 diverges: x grows by (1 + 2 lr) per step; the loss passes 1e4 times
    # its first value within a few log windows. grad_norm stays finite although sum(g^2) overflows float32.
    def loss_fn(params, model_state, batch, rng):
        del batch, rng
        return -jnp.sum(params["x"] ** 2), ({}, model_state)

    state = TrainState.create(params={"x": jnp.full(4, 1.0)}, tx=make_optimizer(optimizer="sgd", b1=0.0,
                                                                                   learning_rate=0.5),
                              key=jax.random.key(0))
    with pytest.raises(DivergedError, match=r"the loss diverged: loss = -.* more than 10000 x max\(\|loss\| at "
                                            r"step 1 = 4"):
        fit(state, make_train_step(loss_fn, donate=False), batches_of(toy.ring8()), num_steps=100, log_every=2,
            workdir=str(tmp_path), progress=False)
    rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert rows and rows[-1]["loss"] < -1e4 * 4
    # The norm of a gradient whose squares overflow float32: finite, and right to float32 precision.
    g = {"a": jnp.full(4, 3e20, jnp.float32), "b": jnp.full(2, -4e20, jnp.float32)}
    assert not np.isfinite(float(jnp.sqrt(sum(jnp.sum(x**2) for x in g.values()))))
    np.testing.assert_allclose(float(global_norm(g)), np.sqrt(4 * 9e40 + 2 * 16e40), rtol=1e-6)
    assert np.isnan(float(global_norm({"a": jnp.array([1.0, jnp.nan])})))


def test_metrics_file_is_valid_json_with_null_for_non_finite(tmp_path):
    w = MetricsWriter(str(tmp_path / "m.jsonl"))
    w.write(3, {"loss": float("nan"), "grad_norm": float("inf"), "kl": 1.5})

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    (line,) = open(tmp_path / "m.jsonl").read().splitlines()
    assert json.loads(line, parse_constant=refuse) == {"step": 3, "loss": None, "grad_norm": None, "kl": 1.5}
    assert json_dumps({"a": [float("-inf"), 2.0]}) == '{"a": [null, 2.0]}'


def test_checkpoint_mismatch_and_corruption_are_reported(tmp_path):
    ck = Checkpointer(str(tmp_path / "ckpt"), run_info={"family": "flow"})
    ck.save(5, make_state())
    other = TrainState.create(params={"mu": jnp.zeros(3), "log_s": jnp.zeros(3)},
                              tx=make_optimizer(learning_rate=0.1), key=jax.random.key(0))
    with pytest.raises(CheckpointError, match=r"\['mu'\].*float32\[2\].*float32\[3\]"):
        ck.restore(other)
    with pytest.raises(CheckpointError, match="family='flow' but this run has family='vae'"):
        Checkpointer(str(tmp_path / "ckpt"), run_info={"family": "vae"}).restore(make_state())
    # Truncate every data file of the checkpoint.
    for root, _, files in os.walk(tmp_path / "ckpt" / "5"):
        for f in files:
            if "info" not in root:
                with open(os.path.join(root, f), "r+b") as fh:
                    fh.truncate(max(0, os.path.getsize(os.path.join(root, f)) // 3))
    with pytest.raises(CheckpointError, match="step 5.* is corrupt"):
        Checkpointer(str(tmp_path / "ckpt"), run_info={"family": "flow"}).restore(make_state())


def test_two_player_step_updates_critic_n_times_and_traces_once():
    traces = []

    def d_loss(params, model_state, batch, rng):  # over the joint {'g', 'd'} trees
        traces.append("d")
        fake = params["g"]["shift"][None] + jax.random.normal(rng, batch["x"].shape)
        real_score = batch["x"] @ params["d"]["w"]
        fake_score = fake @ params["d"]["w"]
        loss = jnp.mean(jax.nn.softplus(-real_score)) + jnp.mean(jax.nn.softplus(fake_score))
        return loss, ({}, model_state)

    def g_loss(params, model_state, batch, rng):
        traces.append("g")
        fake = params["g"]["shift"][None] + jax.random.normal(rng, batch["x"].shape)
        return jnp.mean(jax.nn.softplus(-(fake @ params["d"]["w"]))), ({}, model_state)

    tx = make_optimizer(learning_rate=0.05)
    state = TwoPlayerState(
        g=TrainState.create(params={"shift": jnp.zeros(2)}, tx=tx, key=jax.random.key(0)),
        d=TrainState.create(params={"w": jnp.zeros(2)}, tx=tx, key=jax.random.key(1)))
    step = make_two_player_step(d_loss, g_loss, n_critic=3)
    data = toy.isotropic_mixture(np.array([[2.0, 2.0]]), 0.3, "one")
    b = batches_of(data)
    for i in range(200):
        state, metrics = step(state, b.batch_at(i))
    assert int(state.g.step) == 200 and int(state.d.step) == 600
    assert traces == ["d"] * 3 + ["g"]  # compiled once (the 3 D updates are unrolled), never retraced
    assert {"d_loss", "g_loss", "d_grad_norm", "g_grad_norm"} <= set(metrics)
    # The generator's shift moved toward the data mean (2, 2).
    assert float(jnp.linalg.norm(state.g.params["shift"] - 2.0)) < 1.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(learning_rate=-1.0), "learning_rate must be > 0"),
    (dict(learning_rate=1e-3, schedule="cosine"), "num_steps"),
    (dict(learning_rate=1e-3, optimizer="adagrad"), "optimizer must be"),
    (dict(learning_rate=1e-3, schedule="linear"), "schedule must be"),
])
def test_make_optimizer_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(**kwargs)


def test_ema_tracks_params_with_warmup():
    state = make_state(ema=0.5)
    step = make_train_step(gaussian_nll)
    b = batches_of(toy.ring8())
    for t in range(30):
        prev_ema = np.asarray(state.ema_params["mu"])
        state, _ = step(state, b.batch_at(t))
        decay = min(0.5, (1 + t) / (10 + t))  # 0.1 at t = 0, ..., 0.5 from t = 8 on
        np.testing.assert_allclose(state.ema_params["mu"],
                                   decay * prev_ema + (1 - decay) * np.asarray(state.params["mu"]), rtol=1e-5)
