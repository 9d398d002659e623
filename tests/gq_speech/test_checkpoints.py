"""Resuming from damaged checkpoints: the newest readable one, with a warning; none readable: a clear error."""

import types

import numpy as np
import pytest

from gq_speech import experiment, models
from gq_speech.train import (
    KEEP_CHECKPOINTS,
    CheckpointError,
    DamagedCheckpointWarning,
    TrainConfig,
    checkpoint_manager,
    checkpoint_problem,
    fit,
    restore_newest_readable,
)
from gq_tf._keras import keras, tf
from tests.gq_speech.test_experiment import _toy_split

DATA = ".data-00000-of-00001"


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _state(trainer):
    """Copies of the network's weights and the optimizer's variables (step, Adam moments)."""
    return ([w.numpy().copy() for w in trainer.net.weights],
            [v.numpy().copy() for v in trainer.optimizer.variables])


class _Record(keras.callbacks.Callback):
    """The trainer's state after each epoch (after the checkpoint of that epoch is written) and at the start."""

    def __init__(self):
        super().__init__()
        self.begin, self.epochs = None, []

    def on_train_begin(self, logs=None):
        self.begin = _state(self.model)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(_state(self.model))


def _assert_same(a, b):
    assert len(a[0]) == len(b[0]) and len(a[1]) == len(b[1]) > 1
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        np.testing.assert_array_equal(x, y)  # restored values: exact


def test_truncated_newest_checkpoint_resumes_from_the_one_before(tmp_path):
    """The issue's case: ckpt-2.data truncated (a full disk, a bad copy) made TensorFlow raise IndexError."""
    cfg = models.load_config("rnnt_tiny")
    split = _toy_split(4)  # 2 batches of 2 per epoch
    tcfg = TrainConfig(epochs=2, batch_size=2, warmup_steps=1, save_every_s=1e9)
    keras.utils.set_random_seed(0)
    first = _Record()
    fit(models.build_training_model(cfg), cfg, split, None, tcfg, tmp_path, name="t", callbacks=[first],
        log=lambda m: None)
    ckpt = tmp_path / "ckpt"
    assert sorted(p.name for p in ckpt.glob("*.index")) == ["ckpt-1.index", "ckpt-2.index"]
    # Altered in its middle, so a restore that gave up half way could leave some ckpt-2 values behind.
    _flip(ckpt / f"ckpt-2{DATA}")
    _truncate(ckpt / f"ckpt-2{DATA}")

    said, again = [], _Record()
    with pytest.warns(DamagedCheckpointWarning, match=rf"ckpt-2{DATA} is unreadable.*Resuming from ckpt-1"):
        summary = fit(models.build_training_model(cfg), cfg, split, None, tcfg, tmp_path, name="t",
                      callbacks=[again], log=said.append)
    assert summary["resumed_from"] == 1
    assert any("2 batches (1.00 epochs) are trained again" in m for m in said), said
    # Network and optimizer start exactly as they were after epoch 1: nothing of ckpt-2 leaked in.
    _assert_same(again.begin, first.epochs[0])
    assert int(again.begin[1][0]) > 0  # the optimizer's step counter was restored too

    # The lost epoch was trained again and saved over the damaged checkpoint.
    assert checkpoint_problem(ckpt / "ckpt-2") is None
    said.clear()
    fit(models.build_training_model(cfg), cfg, split, None, tcfg, tmp_path, name="t", log=said.append)
    assert any("trained before" in m for m in said), said

    # Both damaged: a clear error that says what to delete, not a TensorFlow traceback.
    _truncate(ckpt / f"ckpt-1{DATA}")
    _truncate(ckpt / f"ckpt-2{DATA}")
    with pytest.raises(CheckpointError, match=rf"ckpt-2: .*ckpt-2{DATA}.*ckpt-1: .*delete the folder .*ckpt"):
        fit(models.build_training_model(cfg), cfg, split, None, tcfg, tmp_path, name="t", log=lambda m: None)


def _small_run(folder, saves=3):
    """A checkpoint like fit's (weights, epoch, batch), saved ``saves`` times with values = the save number."""
    w = tf.Variable(np.zeros((64, 64), np.float32))
    epoch, batch = tf.Variable(0, dtype=tf.int64), tf.Variable(0, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(w=w, epoch=epoch, batch=batch)
    manager = checkpoint_manager(ckpt, folder, name="s", log=lambda m: None)
    for i in range(1, saves + 1):
        w.assign(np.full((64, 64), i, np.float32))
        epoch.assign(i)
        manager.save()
    return manager


def _fresh(folder, log=lambda m: None):
    w = tf.Variable(np.zeros((64, 64), np.float32))
    ckpt = tf.train.Checkpoint(w=w, epoch=tf.Variable(0, dtype=tf.int64), batch=tf.Variable(0, dtype=tf.int64))
    return w, ckpt, checkpoint_manager(ckpt, folder, name="s", log=log)


@pytest.mark.parametrize("damage, bad_file, position_readable", [
    (lambda f: _truncate(f / f"ckpt-3{DATA}"), f"ckpt-3{DATA} is unreadable", True),
    (lambda f: _truncate(f / f"ckpt-3{DATA}", keep=0.0), f"ckpt-3{DATA} is unreadable", False),
    (lambda f: _flip(f / f"ckpt-3{DATA}"), f"ckpt-3{DATA} is unreadable", True),
    (lambda f: (f / f"ckpt-3{DATA}").unlink(), "ckpt-3.data-\\* is missing", False),
    (lambda f: _truncate(f / "ckpt-3.index"), "ckpt-3.index is unreadable", False),
    (lambda f: _flip(f / "ckpt-3.index"), "ckpt-3.index is unreadable", False),
    (lambda f: (f / "ckpt-3.index").unlink(), "ckpt-3.index is missing", False),
])
def test_each_kind_of_damage_falls_back_to_the_newest_readable(tmp_path, damage, bad_file, position_readable):
    _small_run(tmp_path)
    damage(tmp_path)
    w, ckpt, manager = _fresh(tmp_path)
    said = []
    with pytest.warns(DamagedCheckpointWarning, match=bad_file):
        path = restore_newest_readable(ckpt, manager, name="s", steps_per_epoch=4, log=said.append)
    assert path == str(tmp_path / "ckpt-2")
    assert (w.numpy() == 2).all() and int(ckpt.epoch.numpy()) == 2
    # From epoch 2 to the lost epoch 3: 4 batches, counted when the damaged file still tells its position.
    counted = "4 batches (1.00 epochs) are trained again (the damaged one was at epoch 3, batch 0)"
    assert (counted in said[0]) == position_readable, said
    assert "trained again" in said[0]


def test_keeps_three_checkpoints_and_an_older_one_when_two_are_damaged(tmp_path):
    assert KEEP_CHECKPOINTS == 3
    _small_run(tmp_path, saves=5)
    assert sorted(p.name for p in tmp_path.glob("*.index")) == ["ckpt-3.index", "ckpt-4.index", "ckpt-5.index"]
    _truncate(tmp_path / f"ckpt-5{DATA}")
    (tmp_path / "ckpt-4.index").unlink()
    w, ckpt, manager = _fresh(tmp_path)
    with pytest.warns(DamagedCheckpointWarning, match="ckpt-5 is damaged.*ckpt-4 is damaged.*from ckpt-3"):
        assert restore_newest_readable(ckpt, manager, name="s", log=lambda m: None).endswith("ckpt-3")
    assert (w.numpy() == 3).all()


def test_a_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    _small_run(tmp_path, saves=1)
    other = tf.train.Checkpoint(w=tf.Variable(np.zeros((3,), np.float32)), epoch=tf.Variable(0, dtype=tf.int64),
                                batch=tf.Variable(0, dtype=tf.int64), extra=tf.Variable(1.0))
    manager = checkpoint_manager(other, tmp_path, name="s", log=lambda m: None)
    with pytest.raises(CheckpointError, match="Expected checkpoint .*ckpt-1 to fit .*delete the folder"):
        restore_newest_readable(other, manager, name="s", log=lambda m: None)


@pytest.mark.parametrize("state", [b"", b"model_checkpoint_path: \"ckpt-", None])
def test_a_lost_list_of_checkpoints_is_rebuilt_from_the_files(tmp_path, state):
    """Without its list (the ``checkpoint`` file) the manager sees no checkpoint: training would start over."""
    _small_run(tmp_path)
    if state is None:
        (tmp_path / "checkpoint").unlink()
    else:
        (tmp_path / "checkpoint").write_bytes(state)
    said = []
    with pytest.warns(DamagedCheckpointWarning, match="list of checkpoints.*ckpt-1, ckpt-2, ckpt-3"):
        w, ckpt, manager = _fresh(tmp_path, log=said.append)
    assert said and manager.checkpoints == [str(tmp_path / f"ckpt-{i}") for i in (1, 2, 3)]
    assert restore_newest_readable(ckpt, manager, name="s", log=lambda m: None).endswith("ckpt-3")
    assert (w.numpy() == 3).all()
    manager.save()  # and the oldest is cleaned up as before
    assert sorted(p.name for p in tmp_path.glob("*.index")) == ["ckpt-2.index", "ckpt-3.index", "ckpt-4.index"]


def test_no_checkpoint_yet_restores_nothing(tmp_path):
    w, ckpt, manager = _fresh(tmp_path / "none")
    assert restore_newest_readable(ckpt, manager, name="s", log=lambda m: None) is None


def test_variants_do_not_fine_tune_a_damaged_float_model(tmp_path):
    cfg = models.load_config("rnnt_tiny")
    net = models.build_training_model(cfg)
    folder = tmp_path / "float_model"
    tf.train.CheckpointManager(tf.train.Checkpoint(net=net), str(folder / "ckpt"), max_to_keep=3).save()
    ctx = types.SimpleNamespace(cfg=cfg, float_dir=folder)
    restored = experiment._fresh_float(ctx)
    for a, b in zip(net.weights, restored.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    _truncate(folder / "ckpt" / f"ckpt-1{DATA}")
    with pytest.raises(CheckpointError, match=rf"float checkpoint.*ckpt-1{DATA} is unreadable.*run the same command"):
        experiment._fresh_float(ctx)
