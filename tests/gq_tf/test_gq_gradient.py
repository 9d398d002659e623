"""gq_quantize's own gradient (recomputed, chunked, XLA-compiled) against TensorFlow's
autodiff of the spec's ops (gq_quantize_autodiff): values and gradients to w, theta, s
and mu, for every bit depth, both phases, full and windowed softmax, float32/64."""

import numpy as np
import pytest

import gq_tf
from gq_tf import keras, ops
from gq_tf.codebooks import quantized_weights
from gq_tf.quantizers import STATE_HARD, STATE_TAU

tf = gq_tf._keras.tf


def both(shape, bits, hard, dtype, *, trainable_mu=False, soft_window=8, tau=0.3, seed=0):
    """[(value, dw, dtheta, ds[, dmu])] of the custom and the autodiff path."""
    rng = np.random.default_rng(seed)
    k = 2**bits
    w = tf.constant(rng.normal(size=shape) * 0.3, dtype)
    theta = tf.constant(np.sort(rng.uniform(-1, 1, k)), dtype)
    s = tf.constant(0.8, dtype)
    mu = tf.constant(8.0, dtype) if trainable_mu else 8.0
    upstream = tf.constant(rng.normal(size=shape), dtype)
    out = []
    for f in (ops.gq_quantize, ops.gq_quantize_autodiff):
        inputs = [w, theta, s] + ([mu] if trainable_mu else [])
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = f(w, theta, s, mu, tf.constant(tau, dtype), tf.constant(hard, dtype), soft_window=soft_window)
        out.append([y.numpy()] + [g.numpy() for g in tape.gradient(y, inputs, output_gradients=upstream)])
    return out


def assert_close(custom, autodiff, dtype):
    # float32: sums over thousands of weights in another order (XLA fuses and
    # chunks them), relative to the largest entry; float64 shows the math is the same.
    rtol = 1e-3 if dtype == tf.float32 else 1e-9
    names = ["value", "d/dw", "d/dtheta", "d/ds", "d/dmu"]
    for a, b, name in zip(custom, autodiff, names):
        scale = max(float(np.abs(b).max()), 1e-12)
        assert np.abs(a - b).max() <= rtol * scale, f"{name}: {np.abs(a - b).max()} vs scale {scale}"


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("hard", [0.0, 1.0], ids=["soft", "hard"])
@pytest.mark.parametrize("bits", range(1, 9))
def test_gradients_equal_autodiff(bits, hard, dtype):
    # bits >= 5: K > 16, the windowed softmax.
    assert_close(*both((37, 23), bits, hard, dtype), dtype)


@pytest.mark.parametrize("bits,soft_window", [(3, 8), (6, 2), (8, 16)])
def test_trainable_mu_and_windows(bits, soft_window):
    assert_close(*both((19, 11), bits, 0.0, tf.float64, trainable_mu=True, soft_window=soft_window), tf.float64)
    assert_close(*both((19, 11), bits, 1.0, tf.float32, trainable_mu=True, soft_window=soft_window), tf.float32)


@pytest.mark.parametrize("bits", [2, 8])
def test_a_kernel_of_several_chunks(bits):
    # 70,000 weights: two chunks of ops.CHUNK, the second one zero-padded.
    assert 70_000 > ops.CHUNK
    assert_close(*both((280, 250), bits, 0.0, tf.float64, seed=1), tf.float64)


def test_low_temperature_and_a_large_one():
    for tau in (1e-3, 50.0):
        assert_close(*both((13, 7), 4, 0.0, tf.float64, tau=tau), tf.float64)


def _model_gradients(gradient, precision="float32"):
    keras.mixed_precision.set_global_policy(precision)
    try:
        keras.utils.set_random_seed(0)
        inp = keras.Input((12,))
        x = keras.layers.Dense(16, activation="tanh", name="a")(inp)
        out = keras.layers.Dense(4, name="b", dtype="float32")(x)
        qat = gq_tf.quantize_model(keras.Model(inp, out), {"a": 3, "b": gq_tf.GQ(6, trainable_mu=True)})
        for qw in quantized_weights(qat):
            state = qw.qvars["state"].numpy()
            state[STATE_TAU], state[STATE_HARD] = 0.2, 0.0
            qw.qvars["state"].assign(state)
        x = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
        old, ops.TRAINING_GRADIENT = ops.TRAINING_GRADIENT, gradient
        try:
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.cast(qat(x, training=True), tf.float32) ** 2)
            grads = tape.gradient(loss, qat.trainable_weights)
        finally:
            ops.TRAINING_GRADIENT = old
        return [(w.name.split("/")[-1], g.numpy()) for w, g in zip(qat.trainable_weights, grads)]
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_model_gradients_through_the_quantizer_switch(precision):
    custom, autodiff = _model_gradients("custom", precision), _model_gradients("autodiff", precision)
    assert [n for n, _ in custom] == [n for n, _ in autodiff] and any("gq_theta" in n for n, _ in custom)
    for (name, a), (_, b) in zip(custom, autodiff):
        scale = max(float(np.abs(b).max()), 1e-6)
        # float16 activations round the same way in both; the quantizer runs in float32.
        assert np.abs(a - b).max() <= 2e-3 * scale, name


def test_an_embedding_gradient():
    # An Embedding's gradient reaches the quantizer as IndexedSlices.
    grads = []
    for gradient in ("custom", "autodiff"):
        keras.utils.set_random_seed(0)
        inp = keras.Input((5,), dtype="int32")
        out = keras.layers.Dense(3, name="d")(keras.layers.Embedding(40, 8, name="emb")(inp))
        qat = gq_tf.quantize_model(keras.Model(inp, out), {"emb": 3, "d": None})
        old, ops.TRAINING_GRADIENT = ops.TRAINING_GRADIENT, gradient
        try:
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(qat(np.arange(10).reshape(2, 5) % 40, training=True) ** 2)
            grads.append([tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, qat.trainable_weights)])
        finally:
            ops.TRAINING_GRADIENT = old
    for a, b in zip(*grads):
        assert np.abs(a - b).max() <= 1e-3 * max(float(np.abs(b).max()), 1e-6)
