"""TF ops and tfmot quantizers of GQ, tested against the NumPy reference.

``gq_tf.ops`` computes in float32, ``gq_tf.reference`` in float64 from the
same float32 inputs, so any difference is TF's float32 rounding; the
tolerances below are sized from that, and index paths are compared exactly
on data kept away from decision ties.
"""

import numpy as np
import pytest

import gq_tf  # must come before TensorFlow: it sets TF_USE_LEGACY_KERAS
from gq_tf import ops
from gq_tf import reference as ref
from gq_tf._keras import keras, tf

EPS32 = float(np.finfo(np.float32).eps)
ALL_BITS = tuple(range(1, 9))
SHAPES = ((1,), (17,), (3, 5), (2, 3, 4), (4, 1, 9), (64, 3))


def _dexpand(y, mu):
    """F_inv'(y): how much an error in the companded domain grows in W / s."""
    if mu == 0:
        return np.ones_like(y)
    return np.log1p(mu) * np.exp(np.abs(y) * np.log1p(mu)) / mu


def _companded(w, s, mu):
    return ref.compress(np.clip(np.asarray(w, np.float64) / s, -1.0, 1.0), mu)


def _case(bits, mu, shape, seed, soft_window=4, gap=2e-5):
    """float32 (w, theta, s): theta random and unsorted, ~20% of w beyond s,
    every weight's nearest (and window-edge) distances at least `gap` apart.

    float32 z is within a few ulp (< 1e-6) of the float64 z, so a gap of 2e-5
    in |z - theta| cannot flip which centroid is nearer: it keeps the index
    comparisons exact without loosening them.
    """
    rng = np.random.default_rng(seed)
    k = 2**bits
    theta = rng.uniform(-1.0, 1.0, k).astype(np.float32)
    s = np.float32(rng.uniform(0.2, 3.0))
    n = int(np.prod(shape))
    pool = (rng.normal(0.0, 0.8, size=8 * n + 64) * s).astype(np.float32)
    r = np.sort(np.abs(_companded(pool, float(s), mu)[:, None] - theta.astype(np.float64)), axis=1)
    ok = r[:, 1] - r[:, 0] > gap
    if k > ref.SOFT_WINDOW_MIN_K:
        ok &= r[:, soft_window] - r[:, soft_window - 1] > gap
    good = pool[ok]
    beyond = np.abs(good) > s
    assert ok.sum() >= n and beyond.any(), "test data generator ran out of tie-free weights"
    # Always include one clipped weight, so even a 1-element w exercises the clip.
    first = int(np.argmax(beyond))
    w = np.concatenate([good[first : first + 1], np.delete(good, first)[: n - 1]])
    return rng.permutation(w).reshape(shape), theta, s


def _tf_quantize(w, theta, s, mu, tau, hard, soft_window=4):
    return ops.gq_quantize(
        tf.constant(w),
        tf.constant(theta),
        tf.constant(s),
        mu,
        tf.constant(tau, tf.float32),
        tf.constant(float(hard)),
        soft_window=soft_window,
    ).numpy()


# ---------------------------------------------------------------------------
# gq_quantize against the reference


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("mu", (0, 8, 255))
@pytest.mark.parametrize("tau", (0.05, 1.0))
def test_gq_quantize_soft_matches_reference(bits, mu, tau):
    shape = SHAPES[(bits + mu) % len(SHAPES)]
    w, theta, s = _case(bits, mu, shape, seed=[bits, mu, int(tau * 100)])
    assert np.any(np.abs(w) > s), "want clipped weights in the data"
    got = _tf_quantize(w, theta, s, mu, tau, hard=0)
    w64, th64, s64 = w.astype(np.float64), theta.astype(np.float64), float(s)
    want = ref.gq_forward(w64, th64, s64, mu, tau, hard=False)
    assert got.shape == w.shape
    # Tolerance: float32 rounds z by ~1 ulp (log1p / division); the soft value
    # amplifies that by dz_soft/dz = 2 Var_p(theta) / (tau delta^2) (large at small
    # tau between two far centroids), then F_inv' and s scale it. 8 ulp of that
    # conditioned error (measured: <= 1.3) plus 8 ulp of s for expm1 and the product.
    # A flat ~1e-5*s would not do: at bits=8, tau=0.05 the honest error reaches 1.4e-5*s.
    p = ref.soft_assign(w64, th64, s64, mu, tau)
    z_soft = np.sum(p * th64, axis=-1)
    var = np.sum(p * th64**2, axis=-1) - z_soft**2
    cond = 1.0 + _dexpand(z_soft, mu) * (1.0 + 2.0 * var / (tau * (2.0 / 2**bits) ** 2))
    tol = 8 * EPS32 * s64 * cond
    err = np.abs(got - want)
    assert np.all(err <= tol), (
        f"soft GQ differs from the reference beyond float32 rounding: max err/tol = {np.max(err / tol):.2f}"
    )


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("mu", (0, 8, 255))
@pytest.mark.parametrize("tau", (0.05, 1.0))
def test_gq_quantize_hard_matches_reference(bits, mu, tau):
    shape = SHAPES[(bits * 3 + mu) % len(SHAPES)]
    w, theta, s = _case(bits, mu, shape, seed=[bits, mu, int(tau * 100), 1])
    w64, th64, s64 = w.astype(np.float64), theta.astype(np.float64), float(s)
    got = _tf_quantize(w, theta, s, mu, tau, hard=1)
    j = ref.hard_assign(w64, th64, s64, mu)
    want = ref.gq_forward(w64, th64, s64, mu, tau, hard=True)
    # Tolerance: z_soft + (z_hard - z_soft) is z_hard up to 2 ulp of |z| <= 1,
    # scaled by F_inv'(z_hard) and s; expm1 and the product add a few ulp of s.
    tol = 8 * EPS32 * s64 * (1.0 + _dexpand(th64[j], mu))
    assert np.all(np.abs(got - want) <= tol), f"max err/tol = {np.max(np.abs(got - want) / tol):.2f}"


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("mu", (0, 8, 255))
def test_gq_hard_assign_matches_reference_codebook(bits, mu):
    shape = SHAPES[(bits + 2 * mu) % len(SHAPES)]
    w, theta, s = _case(bits, mu, shape, seed=[bits, mu, 2])
    centroids, indices = ops.gq_hard_assign(tf.constant(w), tf.constant(theta), tf.constant(s), mu)
    want_c, want_i = ref.codebook(w.astype(np.float64), theta.astype(np.float64), float(s), mu)
    assert indices.dtype == tf.int32
    assert tuple(indices.shape) == w.shape
    np.testing.assert_array_equal(
        indices.numpy(), want_i.astype(np.int32), err_msg="indices must match exactly"
    )
    # Centroids: float32 expm1 of theta (a few ulp), scaled by s; F_inv' <= 5.6 at mu=255.
    np.testing.assert_allclose(centroids.numpy(), want_c, rtol=0, atol=8 * EPS32 * float(s) * 6.0)
    assert np.all(np.diff(centroids.numpy()) >= 0), "centroids must be sorted ascending"


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("mu", (0, 8, 255))
def test_hard_switch_equals_the_table_value(bits, mu):
    w, theta, s = _case(bits, mu, (40, 3), seed=[bits, mu, 3])
    centroids, indices = ops.gq_hard_assign(tf.constant(w), tf.constant(theta), tf.constant(s), mu)
    table = tf.gather(centroids, indices).numpy()
    hard = _tf_quantize(w, theta, s, mu, tau=4.0, hard=1)
    soft = _tf_quantize(w, theta, s, mu, tau=4.0, hard=0)
    # Same float32 theta, same index; only z_soft + (z_hard - z_soft) != z_hard
    # rounding (2 ulp of |z| <= 1) times F_inv' (<= 5.6) times s, plus expm1 ulps.
    np.testing.assert_allclose(hard, table, rtol=0, atol=8 * EPS32 * float(s) * 6.6)
    # At tau=4 the assignment is far from one-hot: the soft value is visibly different.
    assert np.max(np.abs(soft - table)) > 1e-2 * float(s), "hard=0 must not give the table value"


@pytest.mark.parametrize("bits", (5, 8))
@pytest.mark.parametrize("soft_window", (1, 3, 16))
def test_window_path_matches_reference_for_any_window(bits, soft_window):
    w, theta, s = _case(bits, 8, (50, 4), seed=[bits, soft_window], soft_window=soft_window)
    w64, th64, s64 = w.astype(np.float64), theta.astype(np.float64), float(s)
    got = _tf_quantize(w, theta, s, 8, 1.0, hard=0, soft_window=soft_window)
    want = ref.gq_forward(w64, th64, s64, 8, 1.0, hard=False, soft_window=soft_window)
    p = ref.soft_assign(w64, th64, s64, 8, 1.0, soft_window)
    z_soft = np.sum(p * th64, axis=-1)
    var = np.sum(p * th64**2, axis=-1) - z_soft**2
    # Same conditioned float32 bound as the soft test above.
    tol = 8 * EPS32 * s64 * (1.0 + _dexpand(z_soft, 8) * (1.0 + 2.0 * var / (2.0 / 2**bits) ** 2))
    assert np.all(np.abs(got - want) <= tol), f"max err/tol = {np.max(np.abs(got - want) / tol):.2f}"


# ---------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("bits", (2, 8))
@pytest.mark.parametrize("hard", (0.0, 1.0))
def test_gradients_reach_w_theta_and_s(bits, hard):
    w_np, theta_np, s_np = _case(bits, 8, (30, 7), seed=[bits, int(hard), 4])
    w, theta, s = tf.Variable(w_np), tf.Variable(theta_np), tf.Variable(s_np)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(ops.gq_quantize(w, theta, s, 8.0, tf.constant(1.0), tf.constant(hard)) ** 2)
    grads = tape.gradient(y, [w, theta, s])
    for name, g in zip(("w", "theta", "s"), grads):
        assert g is not None, f"no gradient to {name} (bits={bits}, hard={hard})"
        g = tf.convert_to_tensor(g).numpy()
        assert np.all(np.isfinite(g)), f"non-finite gradient to {name}"
        assert np.any(g != 0), f"zero gradient to {name} (bits={bits}, hard={hard})"
    # Clipped weights (|w| > s) get no gradient through x = clip(w / s).
    g_w = grads[0].numpy()
    clipped = np.abs(w_np) > s_np
    assert clipped.any()
    np.testing.assert_array_equal(g_w[clipped], 0.0)
    assert np.any(g_w[~clipped] != 0)


@pytest.mark.parametrize("bits", (2, 8))
@pytest.mark.parametrize("mu", (0, 255))
@pytest.mark.parametrize("tau", (0.1, 1.0))
def test_soft_gradients_match_reference_finite_differences(bits, mu, tau):
    w_np, theta_np, s_np = _case(bits, mu, (30,), seed=[bits, mu, int(tau * 10), 6])
    w, theta, s = tf.Variable(w_np), tf.Variable(theta_np), tf.Variable(s_np)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(ops.gq_quantize(w, theta, s, mu, tf.constant(tau), tf.constant(0.0)) ** 2)
    got = np.concatenate([np.ravel(tf.convert_to_tensor(g).numpy()) for g in tape.gradient(y, [w, theta, s])])

    n, k = w_np.size, theta_np.size
    x0 = np.concatenate([w_np, theta_np, [s_np]]).astype(np.float64)

    def loss(x):
        return np.sum(ref.gq_forward(x[:n], x[n : n + k], x[-1], mu, tau, hard=False) ** 2)

    h = 1e-6
    want = np.array([(loss(x0 + h * e) - loss(x0 - h * e)) / (2 * h) for e in np.eye(x0.size)])
    # float64 central differences are accurate to ~1e-9; the float32 gradient
    # carries the forward's conditioned rounding (measured <= 2e-4 of max|grad|).
    # 2e-3 keeps 10x margin; a gradient landing on the wrong centroid (e.g. a
    # bad un-sort of theta) is an O(1) error.
    scale = np.max(np.abs(want))
    assert np.max(np.abs(got - want)) <= 2e-3 * scale, (
        f"max |grad error| / max|grad| = {np.max(np.abs(got - want)) / scale:.1e}"
    )


# ---------------------------------------------------------------------------
# Hardness


@pytest.mark.parametrize("bits", ALL_BITS)
def test_hardness_is_bounded_and_grows_as_tau_falls(bits):
    w, theta, s = _case(bits, 8, (50, 20), seed=[bits, 5])
    taus = (8.0, 2.0, 0.5, 0.125, 0.03)
    h = np.array(
        [
            float(ops.gq_hardness(tf.constant(w), tf.constant(theta), tf.constant(s), 8.0, tf.constant(t)))
            for t in taus
        ]
    )
    k = 2**bits
    # Mean of per-weight max probabilities: float32 sums, 1e-6 slack at the ends.
    assert np.all(h >= 1.0 / k - 1e-6) and np.all(h <= 1.0 + 1e-6), h
    assert np.all(np.diff(h) > 0), f"hardness must increase as tau decreases: {h}"
    h_tiny = float(
        ops.gq_hardness(tf.constant(w), tf.constant(theta), tf.constant(s), 8.0, tf.constant(1e-12))
    )
    # Tie-free data (|z - theta| gaps >= 2e-5, so d gaps >= 4e-10) over tau * delta^2
    # <= 1e-12: the runner-up's logit is <= -400 and exp() underflows to exactly 0.
    assert h_tiny == 1.0


# ---------------------------------------------------------------------------
# Memory of the window path (spec section 3: no size(W) * K tensor for K > 16)

N_BIG = 1_000_000


def _big_tensors(graph, n, k):
    """Op outputs with >= n elements: (the [>=n, ..., k] ones, the biggest size, any unknown shapes)."""
    per_weight_k, biggest, unknown = [], 0, []
    for op in graph.get_operations():
        for out in op.outputs:
            shape = out.shape
            if shape.rank is None or not shape.is_fully_defined():
                unknown.append(f"{op.name}: {shape}")
                continue
            size = shape.num_elements()
            biggest = max(biggest, size)
            # [>= n, ..., K] as asked, or any layout holding n * K values (e.g. [1000, 1000, K]).
            if (shape.rank >= 2 and shape[-1] == k and shape[0] >= n) or size >= n * k:
                per_weight_k.append(f"{op.type} {op.name}: {shape}")
    return per_weight_k, biggest, unknown


def _trace_step(fn, shape, k):
    spec = [tf.TensorSpec(shape, tf.float32), tf.TensorSpec([k], tf.float32), tf.TensorSpec([], tf.float32)]

    @tf.function(input_signature=spec)
    def step(w, theta, s):
        with tf.GradientTape() as tape:
            tape.watch([w, theta, s])
            loss = tf.reduce_sum(fn(w, theta, s) ** 2)
        return tape.gradient(loss, [w, theta, s])

    return step.get_concrete_function().graph


def test_window_path_never_materialises_size_times_k():
    k, soft_window = 256, 4

    def gq(w, theta, s):
        return ops.gq_quantize(w, theta, s, 8.0, tf.constant(0.5), tf.constant(0.0), soft_window=soft_window)

    for shape in ([N_BIG], [1000, 1000]):
        graph = _trace_step(gq, shape, k)
        bad, biggest, unknown = _big_tensors(graph, N_BIG, k)
        # Every shape must be static, or the check below could miss a tensor.
        assert not unknown, f"tensors of unknown shape in the gradient step: {unknown[:5]}"
        assert not bad, f"bits=8 gradient step materialises size(W) x 256 tensors: {bad[:5]}"
        # The documented bound (ops.gq_quantize): 2 * soft_window candidates per weight.
        assert biggest <= 2 * soft_window * N_BIG, f"largest tensor has {biggest} elements"


def test_memory_check_detects_a_full_distance_matrix():
    # Control: the same inspection flags the naive [N, K] softmax, so the test above can fail.
    def naive(w, theta, s):
        d = tf.square(tf.clip_by_value(w / s, -1.0, 1.0)[:, None] - theta)
        return s * tf.reduce_sum(tf.nn.softmax(-d, axis=-1) * theta, axis=-1)

    bad, _, _ = _big_tensors(_trace_step(naive, [N_BIG], 256), N_BIG, 256)
    assert bad


# ---------------------------------------------------------------------------
# The quantizers inside a real tfmot model


def _dense_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    outputs = keras.layers.Dense(5, name="dense")(inputs)
    return keras.Model(inputs, outputs)


def _var(model, fragment):
    found = [v for v in model.weights if fragment in v.name]
    assert len(found) == 1, f"expected one variable named *{fragment}*, got {[v.name for v in model.weights]}"
    return found[0]


def _x():
    return np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)


def test_general_quantizer_in_a_model_uses_the_hard_value_and_keeps_theta_in_box():
    model = _dense_model()
    kernel = model.get_layer("dense").kernel.numpy()
    bias = model.get_layer("dense").bias.numpy()
    qat = gq_tf.quantize_model(model, {"dense": gq_tf.GQ(3, mu=8.0)})
    theta_v, scale_v = _var(qat, "_gq_theta"), _var(qat, "_gq_scale")
    # The scale starts at max|W| of the float kernel (float32 max is exact).
    assert float(scale_v.numpy()) == float(np.max(np.abs(kernel)))
    np.testing.assert_array_equal(theta_v.numpy(), (-1.0 + (2.0 * np.arange(8) + 1.0) / 8).astype(np.float32))

    x = _x()
    theta, s = theta_v.numpy().astype(np.float64), float(scale_v.numpy())
    centroids, indices = ref.codebook(kernel.astype(np.float64), theta, s, 8.0)
    expected = x.astype(np.float64) @ centroids[indices] + bias
    inference = qat(x, training=False).numpy()
    # float32 matmul of 6 products of O(1) terms plus float32 centroids: ~1e-6, 1e-5 is safe.
    np.testing.assert_allclose(inference, expected, rtol=0, atol=1e-5)
    assert np.max(np.abs(inference - model(x).numpy())) > 1e-3, "3-bit inference must differ from float"
    # Training with the default state (tau=tau0, soft phase) gives the soft value instead.
    assert np.max(np.abs(qat(x, training=True).numpy() - inference)) > 1e-4

    qat.compile(keras.optimizers.Adam(learning_rate=1.0), loss="mse")
    qat.fit(x, np.ones((8, 5), np.float32), epochs=3, batch_size=4, verbose=0)
    theta_after = theta_v.numpy()
    assert np.all(np.abs(theta_after) <= 1.0), f"theta left [-1, 1]: {theta_after}"
    assert np.any(theta_after != theta.astype(np.float32)), "theta did not train"
    assert scale_v.numpy() >= np.float32(1e-8), "scale left its constraint s >= 1e-8"


def test_uniform_in_a_model():
    model = _dense_model(seed=1)
    kernel = model.get_layer("dense").kernel.numpy()
    bias = model.get_layer("dense").bias.numpy()
    qat = gq_tf.quantize_model(model, {"dense": gq_tf.Uniform(4)})
    assert not [v for v in qat.weights if "_gq_" in v.name], "Uniform has no GQ variables"
    x = _x()
    centroids, indices = ref.uniform_codebook(kernel, 4)
    expected = x.astype(np.float64) @ centroids[indices] + bias
    # float32 matmul of 6 O(1) products and float32 grid values: ~1e-6, 1e-5 is safe.
    np.testing.assert_allclose(qat(x, training=False).numpy(), expected, rtol=0, atol=1e-5)
    # Straight-through: the training forward value is the quantized one too.
    np.testing.assert_allclose(qat(x, training=True).numpy(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype_policy", ["mixed_float16", "float64"])
@pytest.mark.parametrize("quantizer", [gq_tf.GQ(2), gq_tf.GQ(6), gq_tf.Uniform(4)], ids=repr)
def test_quantizers_run_under_non_float32_dtype_policies(dtype_policy, quantizer):
    # Under mixed_float16 the wrapper hands the quantizer float16 kernels; the
    # GQ math must still run (in float32) and give finite, hard-quantized output.
    keras.mixed_precision.set_global_policy(dtype_policy)
    try:
        qat = gq_tf.quantize_model(_dense_model(), {"dense": quantizer})
        x = np.ones((2, 6), np.float32)
        for training in (False, True):
            y = qat(x, training=training).numpy()
            assert np.all(np.isfinite(y)), (dtype_policy, training)
        book = gq_tf.extract_codebooks(qat)["dense/kernel"]
        assert len(np.unique(book.decode())) <= 2**quantizer.bits
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ---------------------------------------------------------------------------
# Constructor errors and serialization


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: gq_tf.GQ(0), ValueError, r"1\.\.8.*bits=0"),
        (lambda: gq_tf.GQ(9), ValueError, r"1\.\.8.*bits=9"),
        (lambda: gq_tf.GQ(2.5), TypeError, r"int in 1\.\.8.*2\.5.*float"),
        (lambda: gq_tf.GQ(True), TypeError, r"int in 1\.\.8.*True.*bool"),
        (lambda: gq_tf.GQ(4, mu=-1), ValueError, r">= 0.*mu=-1"),
        (lambda: gq_tf.GQ(4, mu=0, trainable_mu=True), ValueError, r"mu > 0.*trainable_mu=True.*mu=0"),
        (lambda: gq_tf.GQ(4, soft_window=0), ValueError, r"1\.\.16.*soft_window=0"),
        (lambda: gq_tf.Uniform(9), ValueError, r"1\.\.8.*bits=9"),
    ],
)
def test_constructor_errors_name_range_and_value(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    "quantizer",
    [
        gq_tf.GeneralQuantizer(5, mu=32.0, trainable_mu=True, soft_window=3),
        gq_tf.GeneralQuantizer(1, mu=0.0),
        gq_tf.Uniform(3),
    ],
    ids=repr,
)
def test_config_and_keras_serialization_round_trip(quantizer):
    config = quantizer.get_config()
    clone = type(quantizer).from_config(config)
    assert type(clone) is type(quantizer)
    assert clone.get_config() == config
    assert clone == quantizer

    serialized = keras.utils.serialize_keras_object(quantizer)
    with gq_tf.quantize_scope():
        restored = keras.utils.deserialize_keras_object(serialized)
    assert type(restored) is type(quantizer)
    assert restored.get_config() == config


def test_non_default_options_survive_the_round_trip():
    q = gq_tf.GQ(6, mu=32.0, trainable_mu=True, soft_window=3)
    restored = gq_tf.GQ.from_config(q.get_config())
    assert (restored.bits, restored.mu, restored.trainable_mu, restored.soft_window) == (6, 32.0, True, 3)
