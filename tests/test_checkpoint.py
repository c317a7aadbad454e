"""Checkpoint integrity: every changed byte of a checkpoint is detected (no silent change, ever), the
damaged step and leaf are named, and the newest intact checkpoint is restored instead."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax.precision import DynamicLossScale
from gen_jax.train import CheckpointError, Checkpointer, CorruptCheckpointError, TrainState, make_optimizer
from gen_jax.train.checkpoint import SEAL_FILE


def make_state(shift=0.0):
    kernel = jax.random.normal(jax.random.key(0), (64, 32))  # random bytes: stored as they are
    params = {"enc": {"kernel": kernel + shift, "bias": jnp.full(8, 0.5 + shift)},
              "log_s": jnp.zeros(3) + shift}
    state = TrainState.create(params=params, tx=make_optimizer(learning_rate=0.1), key=jax.random.key(3))
    return state.replace(step=jnp.asarray(int(shift * 10), jnp.int32))


def _files(step_dir):
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs)


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(jax.tree.map(np.asarray, a.params)),
                    jax.tree.leaves(jax.tree.map(np.asarray, b.params))):
        np.testing.assert_array_equal(x, y)


@pytest.fixture
def two_checkpoints(tmp_path):
    ck = Checkpointer(str(tmp_path / "ckpt"), run_info={"family": "flow"})
    ck.save(10, make_state(1.0))
    ck.save(20, make_state(2.0))
    return ck


def test_round_trip_of_a_sealed_checkpoint(two_checkpoints):
    ck = two_checkpoints
    assert os.path.exists(os.path.join(ck.step_dir(20), SEAL_FILE))
    state, info = ck.restore(make_state())
    _assert_same(state, make_state(2.0))
    assert int(state.step) == 20 and info["family"] == "flow" and len(info["digests"]) == len(info["state"])


def test_every_flipped_byte_is_detected_and_the_intact_checkpoint_restored(two_checkpoints):
    ck = two_checkpoints
    files = _files(ck.step_dir(20))
    assert len(files) >= 10  # orbax metadata, the OCDBT manifests and data files, the record, the seal
    flips = 0
    for path in files:
        size = os.path.getsize(path)
        data = f"{os.sep}d{os.sep}" in path  # OCDBT data files: also their first and last byte
        for offset in sorted({size // 2} | ({0, size - 1} if data else set())):
            _flip(path, offset)
            try:
                found = ck.restore_latest_intact(make_state())
                assert found.step == 10 and [e.step for e in found.corrupt] == [20]
                assert os.path.relpath(path, ck.step_dir(20)) in str(found.corrupt[0])
                _assert_same(found.state, make_state(1.0))
            finally:
                _flip(path, offset)  # undo
            flips += 1
    assert flips >= 20
    with pytest.raises(CorruptCheckpointError, match="step 20"):  # and asked for by its step
        _flip(files[0], 0)
        ck.restore(make_state(), step=20)
    _flip(files[0], 0)
    _assert_same(ck.restore(make_state())[0], make_state(2.0))  # every flip undone: intact again


def test_a_changed_array_names_its_leaf(two_checkpoints):
    ck = two_checkpoints
    named = []
    for path in (p for p in _files(ck.step_dir(20)) if f"{os.sep}d{os.sep}" in p):  # OCDBT data files
        _flip(path, os.path.getsize(path) // 2)
        try:
            with pytest.raises(CorruptCheckpointError) as err:
                ck.restore(make_state())
        finally:
            _flip(path, os.path.getsize(path) // 2)
        msg = str(err.value)
        assert "step 20" in msg and "changed since it was saved" in msg
        assert "The newest intact checkpoint is step 10" in msg
        named += [line for line in msg.split("; ") if line.startswith("the values of leaf")]
    # The file that holds the arrays' bytes: its changed byte is traced to the leaf it belongs to.
    assert any(".params['enc']['kernel']" in line or ".opt_state" in line for line in named), named


def test_a_save_cut_off_before_its_seal_is_incomplete(two_checkpoints):
    ck = two_checkpoints
    os.remove(os.path.join(ck.step_dir(20), SEAL_FILE))
    with pytest.raises(CorruptCheckpointError, match="no seal.*cut off"):
        ck.restore(make_state(), step=20)
    assert ck.restore_latest_intact(make_state()).step == 10


def test_quarantine_moves_the_corrupt_step_aside_and_training_can_save_it_again(two_checkpoints):
    ck = two_checkpoints
    _flip(_files(ck.step_dir(20))[0], 0)
    found = ck.restore_latest_intact(make_state())
    moved = ck.quarantine(found.corrupt[0].step)
    assert moved.endswith(os.path.join("corrupt", "20")) and os.path.isdir(moved)
    assert ck.all_steps() == [10]
    ck.save(20, make_state(2.0))
    _assert_same(ck.restore(make_state())[0], make_state(2.0))


def test_every_checkpoint_corrupt_is_an_error_listing_them(two_checkpoints):
    ck = two_checkpoints
    for step in (10, 20):
        os.remove(os.path.join(ck.step_dir(step), SEAL_FILE))
    with pytest.raises(CheckpointError, match="every checkpoint .* is corrupt: step 20: .* \\| step 10: "):
        ck.restore_latest_intact(make_state())


def test_an_intact_checkpoint_of_another_model_is_not_skipped_but_refused(two_checkpoints):
    other = TrainState.create(params={"w": jnp.zeros(4)}, tx=make_optimizer(learning_rate=0.1),
                              key=jax.random.key(0))
    with pytest.raises(CheckpointError, match="does not match the state") as err:
        two_checkpoints.restore_latest_intact(other)
    assert not isinstance(err.value, CorruptCheckpointError)


def test_nothing_is_written_before_the_first_save(tmp_path):
    ck = Checkpointer(str(tmp_path / "ckpt"))
    assert ck.latest_step() is None and ck.restore_latest_intact(make_state()).state is None
    assert not (tmp_path / "ckpt").exists()


def test_a_checkpoint_whose_state_differs_only_in_empty_nodes_is_refused_naming_them(tmp_path):
    """A state whose arrays all match but whose empty nodes differ (e.g. a field renamed between gen_jax
    versions, like TrainState's batch_stats -> model_state) is incompatible, not corrupt: refused, with the
    nodes named on each side, and nothing is moved aside."""
    ck = Checkpointer(str(tmp_path / "ckpt"))
    ck.save(1, {"params": {"w": jnp.arange(3.0)}, "old_stats": {}})
    with pytest.raises(CheckpointError, match="another state structure .*saved, not in this run: old_stats; "
                                              "in this run, not saved: new_stats") as err:
        ck.restore_latest_intact({"params": {"w": jnp.zeros(3)}, "new_stats": {}})
    assert not isinstance(err.value, CorruptCheckpointError)
    assert ck.all_steps() == [1]


def test_a_checkpoint_from_before_an_optional_field_restores_with_the_field_empty(tmp_path):
    """A field added to the state later and empty (None) in runs that do not use it (TrainState.loss_scale:
    float16 only) is absent from older checkpoints: they restore, every array as saved, the field empty. A
    run that fills the field is still refused."""
    ck = Checkpointer(str(tmp_path / "ckpt"))
    ck.save(1, {"params": {"w": jnp.arange(3.0)}, "ema_params": None})
    restored, _ = ck.restore({"params": {"w": jnp.zeros(3)}, "ema_params": None, "loss_scale": None})
    np.testing.assert_array_equal(restored["params"]["w"], np.arange(3.0))
    assert restored["loss_scale"] is None and restored["ema_params"] is None
    with pytest.raises(CheckpointError):
        ck.restore({"params": {"w": jnp.zeros(3)}, "ema_params": None, "loss_scale": {"scale": jnp.ones(())}})


def test_a_loss_scale_round_trips(tmp_path):
    """A float16 run's state: its dynamic loss scale (scale, count of finite steps, overflows) is saved and
    restored with it."""
    state = make_state(1.0).replace(loss_scale=DynamicLossScale.create(initial=2.0**10, period=7))
    state = state.replace(loss_scale=state.loss_scale.adjust(jnp.asarray(False)).adjust(jnp.asarray(True)))
    ck = Checkpointer(str(tmp_path / "ckpt"))
    ck.save(1, state)
    template = make_state(0.0).replace(loss_scale=DynamicLossScale.create(period=7))
    restored, _ = ck.restore(template)
    assert (float(restored.loss_scale.scale), int(restored.loss_scale.good_steps),
            int(restored.loss_scale.overflows), restored.loss_scale.period) == (512.0, 1, 1, 7)
    _assert_same(restored, state)
