"""The annealing schedule, its callback in real training, and resuming it."""

import numpy as np
import pytest

import gq_tf
from gq_tf import keras
from gq_tf.annealing import anneal_schedule
from gq_tf.codebooks import quantized_weights
from gq_tf.quantizers import STATE_HARD, STATE_STEP, STATE_TAU


def test_schedule_formula():
    kw = dict(tau0=1.0, gamma=0.5, anneal_every=10, tau_min=0.1)
    assert anneal_schedule(0, **kw) == (1.0, False, False)
    assert anneal_schedule(9, **kw) == (1.0, False, False)
    assert anneal_schedule(10, **kw) == (0.5, False, False)
    assert anneal_schedule(35, **kw) == (0.125, False, False)
    assert anneal_schedule(40, **kw) == (0.1, True, True)  # 0.0625 clipped to tau_min
    assert anneal_schedule(5, hard_after=5, **kw) == (1.0, True, True)


def test_hard_every_runs_periodic_hard_steps_in_soft_phase():
    kw = dict(tau0=1.0, gamma=0.5, anneal_every=100, tau_min=0.01, hard_every=3)
    assert [anneal_schedule(t, **kw)[2] for t in range(7)] == [False, False, True, False, False, True, False]
    assert not any(anneal_schedule(t, **kw)[1] for t in range(7))


@pytest.mark.parametrize("tau0,gamma,tau_min,every,hard_after", [
    (1.0, 0.5, 0.01, 7, None), (1.0, 0.5, 0.125, 3, None), (2.0, 0.9, 0.05, 1, None),
    (1.0, 0.5, 0.01, 10, 25), (1.0, 1.0, 0.01, 10, None), (0.01, 0.5, 0.01, 4, None),
])
def test_hard_step_is_the_first_hard_step(tau0, gamma, tau_min, every, hard_after):
    cb = gq_tf.GQAnnealing(tau0=tau0, gamma=gamma, anneal_every=every, tau_min=tau_min, hard_after=hard_after)
    first = next((t for t in range(5000) if cb.schedule(t)[1]), None)
    assert cb.hard_step == first


@pytest.mark.parametrize("kwargs,match", [
    (dict(tau0=0), "tau0.*> 0"), (dict(tau_min=-1.0), "tau_min"), (dict(gamma=1.5), r"gamma.*\(0, 1\]"),
    (dict(anneal_every=0), "anneal_every.*>= 1"), (dict(anneal_every=2.5), "anneal_every"),
    (dict(hard_after=-1), "hard_after"), (dict(hard_every=-2), "hard_every"), (dict(tau0=float("nan")), "tau0"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gq_tf.GQAnnealing(**kwargs)


def _tiny(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="tanh", name="a"),
                              keras.layers.Dense(3, name="b")])
    return model


def _data(n=64):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)).astype("float32"), rng.normal(size=(n, 3)).astype("float32")


def _fit(qat, cb, epochs, x, y):
    qat.compile(keras.optimizers.SGD(0.05), "mse")
    return qat.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0, callbacks=[cb])


def _states(qat):
    return [qw.qvars["state"].numpy() for qw in quantized_weights(qat) if "state" in qw.qvars]


def test_callback_reaches_hard_phase_on_schedule():
    x, y = _data()
    qat = gq_tf.quantize_model(_tiny(), {"a": 2, "b": 8})
    cb = gq_tf.GQAnnealing(tau0=1.0, gamma=0.5, anneal_every=2, tau_min=0.125)
    assert cb.hard_step == 6
    # 4 batches per epoch: after epoch 1 (steps 0-3) soft, after epoch 2 (4-7) hard.
    hist = _fit(qat, cb, 1, x, y)
    for s in _states(qat):
        assert s[STATE_STEP] == 4 and s[STATE_TAU] == 0.25 and s[STATE_HARD] == 0.0
    assert hist.history["gq_hard"] == [0.0] and hist.history["gq_tau"] == [0.5]
    soft_out = qat(x, training=True).numpy()
    hist = _fit(qat, cb, 1, x, y)
    for s in _states(qat):
        assert s[STATE_STEP] == 8 and s[STATE_TAU] == 0.125 and s[STATE_HARD] == 1.0
    assert hist.history["gq_hard"] == [1.0]
    # In the hard phase the training forward is the deployed (hard) value;
    # straight-through arithmetic differs from the table by float32 rounding only.
    np.testing.assert_allclose(qat(x, training=True), qat(x, training=False), rtol=1e-5, atol=1e-6)
    assert not np.allclose(soft_out, qat(x, training=False), atol=1e-3)
    assert 0.5 < hist.history["gq_hardness"][0] <= 1.0


def test_hardness_grows_as_tau_falls():
    x, y = _data()
    qat = gq_tf.quantize_model(_tiny(), 3)
    cb = gq_tf.GQAnnealing(tau0=4.0, gamma=0.25, anneal_every=4, tau_min=0.001)
    hist = _fit(qat, cb, 4, x, y)
    h = hist.history["gq_hardness"]
    assert h == sorted(h) and h[-1] > 0.99 and h[0] < 0.9


def test_callback_needs_gq_quantizers():
    x, y = _data()
    qat = gq_tf.quantize_model(_tiny(), {".*": gq_tf.Uniform(8)})
    with pytest.raises(ValueError, match="only uniform quantizers"):
        _fit(qat, gq_tf.GQAnnealing(), 1, x, y)


def test_resume_continues_schedule_and_training_exactly(tmp_path):
    x, y = _data()
    sched = dict(tau0=1.0, gamma=0.5, anneal_every=3, tau_min=0.125, hard_every=4)

    straight = gq_tf.quantize_model(_tiny(), {"a": 3, "b": {"kernel": 5}})
    _fit(straight, gq_tf.GQAnnealing(**sched), 4, x, y)

    first = gq_tf.quantize_model(_tiny(), {"a": 3, "b": {"kernel": 5}})
    _fit(first, gq_tf.GQAnnealing(**sched), 2, x, y)
    gq_tf.save_qat(first, tmp_path / "ckpt")
    resumed = gq_tf.load_qat(tmp_path / "ckpt")
    cb = gq_tf.GQAnnealing(**sched)
    _fit(resumed, cb, 2, x, y)

    assert cb.step == 16
    for a, b in zip(_states(straight), _states(resumed)):
        np.testing.assert_array_equal(a, b)
    # SGD has no slot state, so resumed training is the same computation.
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # float32 reduction order only
