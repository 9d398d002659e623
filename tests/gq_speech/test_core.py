"""Tests of the ASR core: log-mel front-end, RNN-T loss, greedy/beam decoding, WER/CER.

The numerical truth for the RNN-T loss is a brute-force sum over every
alignment path, written here in NumPy float64.
"""

import itertools
import json

import numpy as np
import pytest

import gq_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from gq_speech import decoding, features, metrics, rnnt
from gq_speech.decoding import (
    BatchGreedyDecoder,
    GreedyDecoder,
    beam_search,
    greedy_decode_batch,
    greedy_steps,
    ids_to_lists,
)
from gq_speech.features import (
    FeatureConfig,
    FeatureStats,
    StreamingFeatures,
    log_mel,
    num_frames,
)
from gq_speech.metrics import cer, error_counts, wer
from gq_speech.rnnt import rnnt_loss
from gq_tf import keras
from gq_tf._keras import tf


def test_public_api():
    assert sorted(features.__all__) == [
        "FeatureConfig",
        "FeatureStats",
        "StreamingFeatures",
        "log_mel",
        "num_frames",
    ]
    assert rnnt.__all__ == ["rnnt_loss"]
    assert sorted(decoding.__all__) == [
        "BatchGreedyDecoder",
        "GreedyDecoder",
        "beam_search",
        "greedy_decode_batch",
        "greedy_steps",
        "ids_to_lists",
    ]
    assert sorted(metrics.__all__) == ["cer", "error_counts", "relative_difference", "utterance_errors", "wer",
                                       "wer_interval"]


# --------------------------------------------------------------------------
# Features


def _audio(n, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000.0
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)
    return x.astype(np.float32)


def test_feature_config_roundtrip_and_errors():
    cfg = FeatureConfig(n_mels=40, fmax=8000.0)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert FeatureConfig.from_dict(d) == cfg
    assert FeatureConfig().to_dict()["n_mels"] == 80
    with pytest.raises(ValueError, match="fft_length"):
        FeatureConfig(fft_length=256)
    with pytest.raises(ValueError, match="fmax"):
        FeatureConfig(fmax=9000.0)
    with pytest.raises(ValueError, match="Unknown FeatureConfig keys"):
        FeatureConfig.from_dict({"n_mel": 80})


@pytest.mark.parametrize("n", [0, 399, 400, 559, 560, 561, 16000])
def test_num_frames_matches_log_mel(n):
    cfg = FeatureConfig(n_mels=16)
    expected = max(0, 1 + (n - 400) // 160)
    assert num_frames(n, cfg) == expected
    assert int(num_frames(tf.constant(n), cfg)) == expected
    assert log_mel(_audio(n), cfg).shape == (expected, 16)


def test_log_mel_matches_numpy_reference():
    cfg = FeatureConfig(n_mels=40)
    audio = _audio(4000)
    frames = np.stack([audio[i * 160 : i * 160 + 400] for i in range(num_frames(4000, cfg))])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic Hann
    power = np.abs(np.fft.rfft(frames.astype(np.float64) * window, n=512)) ** 2
    mel = power @ features._mel_matrix(cfg).numpy().astype(np.float64)
    expected = np.log(np.maximum(mel, cfg.log_floor))
    # float32 FFT vs float64: relative power error ~1e-6 -> ~1e-6 in the log;
    # 1e-4 leaves room for low-energy bins.
    np.testing.assert_allclose(log_mel(audio, cfg).numpy(), expected, atol=1e-4)
    # The 440 Hz tone dominates: the loudest mel bin is the one weighting its FFT bin most.
    tone_bin = round(440 * 512 / 16000)
    assert np.argmax(expected.mean(0)) == np.argmax(features._mel_matrix(cfg).numpy()[tone_bin])


def test_log_mel_batch_and_prefix_are_exact():
    cfg = FeatureConfig()
    audio = np.stack([_audio(8000, 1), _audio(8000, 2)])
    full = log_mel(audio, cfg).numpy()
    for b in range(2):
        # Same frames through the same kernels: only FFT batching may differ.
        np.testing.assert_allclose(log_mel(audio[b], cfg).numpy(), full[b], atol=1e-5)
    for n in (400, 1234, 5000):
        prefix = log_mel(audio[0, :n], cfg).numpy()
        assert prefix.shape[0] == num_frames(n, cfg)
        np.testing.assert_allclose(prefix, full[0, : prefix.shape[0]], atol=1e-5)


def test_streaming_features_equal_offline():
    cfg = FeatureConfig()
    audio = _audio(9000, 3)
    stream = StreamingFeatures(cfg)
    chunks, start = [], 0
    for size in [0, 100, 159, 160, 401, 1, 3000, 777, 4402]:
        chunks.append(stream.push(audio[start : start + size]))
        start += size
    assert start == len(audio)
    assert all(c.shape[1] == cfg.n_mels for c in chunks)
    got = np.concatenate(chunks)
    offline = log_mel(audio, cfg).numpy()
    assert got.shape == offline.shape
    np.testing.assert_allclose(got, offline, atol=1e-5)  # float rounding of the FFT only
    assert stream.frames_emitted == offline.shape[0]
    stream.reset()
    np.testing.assert_allclose(stream.push(audio[:400]), offline[:1], atol=1e-5)
    with pytest.raises(ValueError, match="1-D"):
        stream.push(np.zeros([2, 2]))


def test_feature_stats():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, size=(n, 5)) for n in (7, 1, 30)]
    allx = np.concatenate(chunks)
    stats = FeatureStats.compute(iter(chunks + [np.zeros([0, 5])]))
    assert stats.count == 38
    # float64 accumulation, float32 storage.
    np.testing.assert_allclose(stats.mean, allx.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats.std, allx.std(0), rtol=1e-6)

    # Padded batches with lengths: the padding (1e6) must not leak in.
    batch = np.full([2, 30, 5], 1e6)
    batch[0, :7], batch[1, :1] = chunks[0], chunks[1]
    padded = FeatureStats.compute([(batch, [7, 1]), chunks[2][None]])
    np.testing.assert_allclose(padded.mean, stats.mean, rtol=1e-6)
    np.testing.assert_allclose(padded.std, stats.std, rtol=1e-6)

    normed = stats.apply(allx)
    np.testing.assert_allclose(normed.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(normed.std(0), 1, atol=1e-5)
    np.testing.assert_allclose(
        stats.apply(tf.constant(allx, tf.float32)).numpy(), normed, atol=1e-5
    )

    again = FeatureStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    np.testing.assert_array_equal(again.mean, stats.mean)
    np.testing.assert_array_equal(again.std, stats.std)
    assert again.count == 38
    # A constant bin gets the std floor, not a division by zero.
    const = FeatureStats.compute([np.ones([4, 2])])
    assert np.all(const.std == np.float32(1e-3))
    with pytest.raises(ValueError, match="at least one"):
        FeatureStats.compute([])


# --------------------------------------------------------------------------
# RNN-T loss


def _log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def brute_force_nll(logits, labels, t_len, u_len, blank=0):
    """-log sum over every alignment path of T blanks and U labels (last step a blank)."""
    lp = _log_softmax(np.asarray(logits, np.float64))
    steps = t_len - 1 + u_len
    paths = []
    for label_steps in itertools.combinations(range(steps), u_len):
        t = u = 0
        total = 0.0
        for i in range(steps):
            if i in label_steps:
                total += lp[t, u, labels[u]]
                u += 1
            else:
                total += lp[t, u, blank]
                t += 1
        paths.append(total + lp[t, u, blank])
    paths = np.array(paths)
    m = paths.max()
    return -(m + np.log(np.exp(paths - m).sum()))


def _random_case(seed, batch=4):
    rng = np.random.default_rng(seed)
    max_t, max_u, vocab = rng.integers(1, 5), rng.integers(0, 4), rng.integers(3, 5)
    logits = rng.normal(0, 2, size=(batch, max_t, max_u + 1, vocab)).astype(np.float32)
    labels = rng.integers(1, vocab, size=(batch, max_u)).astype(np.int32)
    t_len = rng.integers(1, max_t + 1, size=batch).astype(np.int32)
    u_len = rng.integers(0, max_u + 1, size=batch).astype(np.int32)
    t_len[0], u_len[0] = max_t, max_u  # one item fills the whole lattice
    return logits, labels, t_len, u_len


@pytest.mark.parametrize("seed", range(8))
def test_rnnt_loss_matches_brute_force(seed):
    logits, labels, t_len, u_len = _random_case(seed)
    got = rnnt_loss(logits, labels, t_len, u_len).numpy()
    expected = [
        brute_force_nll(logits[b, : t_len[b], : u_len[b] + 1], labels[b], t_len[b], u_len[b])
        for b in range(len(t_len))
    ]
    # float32 logits, losses of order 10: rounding ~1e-6.
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_rnnt_loss_nonzero_blank_and_float64():
    logits, labels, t_len, u_len = _random_case(11)
    labels = np.where(labels == 2, 0, labels)  # blank=2: labels avoid it
    got = rnnt_loss(logits.astype(np.float64), labels, t_len, u_len, blank=2)
    assert got.dtype == tf.float64
    expected = [
        brute_force_nll(
            logits[b, : t_len[b], : u_len[b] + 1], labels[b], t_len[b], u_len[b], blank=2
        )
        for b in range(len(t_len))
    ]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)  # float64 throughout


def test_rnnt_loss_half_precision_logits():
    logits, labels, t_len, u_len = _random_case(6)
    half = logits.astype(np.float16)
    got = rnnt_loss(half, labels, t_len, u_len)
    assert got.dtype == tf.float16
    expected = rnnt_loss(half.astype(np.float32), labels, t_len, u_len).numpy()
    # Computed in float32; only the float16 rounding of the result (~1e-3 relative) remains.
    np.testing.assert_allclose(got.numpy().astype(np.float32), expected, rtol=2e-3)


def test_rnnt_loss_edge_lengths():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(1, 4, 1, 3))
    lp = _log_softmax(logits)
    # U = 0: the only path is T blanks along u = 0.
    got = rnnt_loss(logits, np.zeros([1, 0], np.int32), [4], [0]).numpy()
    np.testing.assert_allclose(got, [-lp[0, :, 0, 0].sum()], atol=1e-10)
    # T = 1: every label on frame 0, then one blank.
    logits = rng.normal(size=(1, 1, 4, 3))
    lp = _log_softmax(logits)
    labels = np.array([[2, 1, 2]], np.int32)
    got = rnnt_loss(logits, labels, [1], [3]).numpy()
    expected = -(lp[0, 0, 0, 2] + lp[0, 0, 1, 1] + lp[0, 0, 2, 2] + lp[0, 0, 3, 0])
    np.testing.assert_allclose(got, [expected], atol=1e-10)


def test_rnnt_loss_ignores_padding():
    logits, labels, t_len, u_len = _random_case(3)
    t_len[1], u_len[1] = 1, 0
    base = rnnt_loss(logits, labels, t_len, u_len).numpy()
    noisy, noisy_labels = logits.copy(), labels.copy()
    for b in range(len(t_len)):
        noisy[b, t_len[b] :] = 50.0
        noisy[b, :, u_len[b] + 1 :] = -50.0
        noisy_labels[b, u_len[b] :] = 0
    np.testing.assert_array_equal(rnnt_loss(noisy, noisy_labels, t_len, u_len).numpy(), base)

    x = tf.constant(noisy)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(rnnt_loss(x, noisy_labels, t_len, u_len))
    grad = tape.gradient(loss, x).numpy()
    assert np.all(np.isfinite(grad))
    for b in range(len(t_len)):
        assert np.all(grad[b, t_len[b] :] == 0)
        assert np.all(grad[b, :, u_len[b] + 1 :] == 0)


def test_rnnt_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(2, 3, 3, 3))
    labels = np.array([[1, 2], [2, 0]], np.int32)
    t_len, u_len = np.array([3, 2], np.int32), np.array([2, 1], np.int32)

    def total(x):
        return sum(
            brute_force_nll(x[b, : t_len[b], : u_len[b] + 1], labels[b], t_len[b], u_len[b])
            for b in range(2)
        )

    x = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(rnnt_loss(x, labels, t_len, u_len))
    grad = tape.gradient(loss, x).numpy()
    eps = 1e-6
    numeric = np.zeros_like(logits)
    for idx in np.ndindex(*logits.shape):
        d = np.zeros_like(logits)
        d[idx] = eps
        numeric[idx] = (total(logits + d) - total(logits - d)) / (2 * eps)
    # Central differences in float64: truncation ~eps^2, rounding ~1e-16/eps = 1e-10.
    np.testing.assert_allclose(grad, numeric, atol=1e-8)
    # The gradient w.r.t. logits of a softmax-normalised NLL sums to 0 per cell.
    np.testing.assert_allclose(grad.sum(-1), 0, atol=1e-12)


def test_rnnt_loss_in_tf_function_with_unknown_shapes():
    logits, labels, t_len, u_len = _random_case(2)
    fn = tf.function(
        rnnt_loss,
        input_signature=[
            tf.TensorSpec([None, None, None, None], tf.float32),
            tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.int32),
        ],
    )
    np.testing.assert_allclose(
        fn(logits, labels, t_len, u_len).numpy(),
        rnnt_loss(logits, labels, t_len, u_len).numpy(),
        atol=1e-6,
    )
    other = _random_case(4)  # a different lattice size, same trace
    np.testing.assert_allclose(fn(*other).numpy(), rnnt_loss(*other).numpy(), atol=1e-6)


def test_rnnt_loss_errors():
    logits, labels, t_len, u_len = _random_case(1)
    with pytest.raises(ValueError, match=r"\[B, T, U \+ 1, V\]"):
        rnnt_loss(logits[0], labels, t_len, u_len)
    with pytest.raises(tf.errors.InvalidArgumentError, match="logit_lengths >= 1"):
        rnnt_loss(logits, labels, np.zeros_like(t_len), u_len)
    with pytest.raises(tf.errors.InvalidArgumentError, match="label_lengths <= "):
        rnnt_loss(logits, labels, t_len, u_len + 5)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels.shape\[1\] \+ 1"):
        rnnt_loss(logits, np.zeros([4, labels.shape[1] + 1], np.int32), t_len, u_len)


def test_rnnt_loss_trains_under_model_fit():
    keras.utils.set_random_seed(0)
    t, u, v = 5, 3, 4
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, t, u + 1, 6)).astype(np.float32)
    y = rng.integers(1, v, size=(8, u)).astype(np.int32)
    inputs = keras.Input((t, u + 1, 6))
    model = keras.Model(inputs, keras.layers.Dense(v)(inputs))

    def loss(y_true, y_pred):
        batch = tf.shape(y_pred)[0]
        return rnnt_loss(
            y_pred, tf.cast(y_true, tf.int32), tf.fill([batch], t), tf.fill([batch], u)
        )

    model.compile(keras.optimizers.Adam(0.05), loss=loss)
    history = model.fit(x, y, batch_size=4, epochs=4, verbose=0).history["loss"]
    assert np.all(np.isfinite(history))
    assert history[-1] < history[0]


# --------------------------------------------------------------------------
# Decoding


class RandomTransducer:
    """A tiny random prediction RNN + tanh joint, in NumPy and in TF (float64 both)."""

    def __init__(self, seed, vocab=6, dim=5, pred_dim=4, hidden=7, blank_bias=0.0):
        rng = np.random.default_rng(seed)
        self.embed = rng.normal(size=(vocab, pred_dim))
        self.w_rec = rng.normal(size=(pred_dim, pred_dim)) * 0.7
        self.w_enc = rng.normal(size=(dim, hidden))
        self.w_pred = rng.normal(size=(pred_dim, hidden))
        self.w_out = rng.normal(size=(hidden, vocab))
        self.bias = np.zeros(vocab)
        self.bias[0] = blank_bias
        self.dim, self.pred_dim = dim, pred_dim

    # NumPy callables for greedy_steps / beam_search.
    def pred_step(self, token, state):
        h = np.tanh(self.embed[token] + state @ self.w_rec)
        return h, h

    def joint(self, enc, pred):
        return np.tanh(enc @ self.w_enc + pred @ self.w_pred) @ self.w_out + self.bias

    # TF callables for greedy_decode_batch.
    def pred_fn(self, tokens, state):
        h = tf.tanh(tf.gather(self.embed, tokens) + tf.matmul(state[0], self.w_rec))
        return h, [h]

    def joint_fn(self, enc, pred):
        return (
            tf.matmul(
                tf.tanh(tf.matmul(enc, self.w_enc) + tf.matmul(pred, self.w_pred)), self.w_out
            )
            + self.bias
        )


@pytest.mark.parametrize("max_symbols", [1, 2, 3])
def test_greedy_batch_matches_sequential(max_symbols):
    total_tokens, capped = 0, 0
    for seed in range(3):
        net = RandomTransducer(seed, blank_bias=-1.0)
        rng = np.random.default_rng(100 + seed)
        enc = rng.normal(size=(3, 6, net.dim))
        lengths = np.array([6, 2, 0], np.int32)
        ids, out_lengths = greedy_decode_batch(
            enc,
            lengths,
            net.pred_fn,
            net.joint_fn,
            [tf.zeros([3, net.pred_dim], tf.float64)],
            max_symbols_per_frame=max_symbols,
        )
        got = ids_to_lists(ids, out_lengths)
        for b in range(3):
            expected = greedy_steps(
                enc[b, : lengths[b]],
                net.pred_step,
                net.joint,
                np.zeros(net.pred_dim),
                max_symbols_per_frame=max_symbols,
            )
            assert got[b] == expected  # discrete outputs: exact
            total_tokens += len(expected)
            capped += len(expected) >= max_symbols * lengths[b] > 0
        assert ids.shape[1] == max(out_lengths.numpy().max(), 0)
    assert total_tokens > 0
    assert capped > 0  # the per-frame cap was exercised


def test_batch_greedy_decoder_compiled():
    net = RandomTransducer(4, blank_bias=-1.0)
    enc = np.random.default_rng(0).normal(size=(2, 5, net.dim))
    decode = BatchGreedyDecoder(net.pred_fn, net.joint_fn, max_symbols_per_frame=2)
    state = [tf.zeros([2, net.pred_dim], tf.float64)]
    ids, lengths = decode(enc, [5, 3], state)
    ids2, lengths2 = greedy_decode_batch(
        enc, [5, 3], net.pred_fn, net.joint_fn, state, max_symbols_per_frame=2
    )
    assert ids_to_lists(ids, lengths) == ids_to_lists(ids2, lengths2)


def test_greedy_decoder_resumes_chunk_by_chunk():
    net = RandomTransducer(1, blank_bias=-0.5)
    enc = np.random.default_rng(1).normal(size=(11, net.dim))
    whole = greedy_steps(
        enc, net.pred_step, net.joint, np.zeros(net.pred_dim), max_symbols_per_frame=3
    )
    dec = GreedyDecoder(net.pred_step, net.joint, np.zeros(net.pred_dim), max_symbols_per_frame=3)
    pieces = [dec.push(enc[a:b]) for a, b in [(0, 0), (0, 1), (1, 5), (5, 6), (6, 11)]]
    assert [k for piece in pieces for k in piece] == whole == dec.tokens
    assert dec.frames_seen == 11
    dec.reset()
    assert dec.push(enc) == whole
    with pytest.raises(ValueError, match="max_symbols_per_frame"):
        GreedyDecoder(net.pred_step, net.joint, None, max_symbols_per_frame=0)


TARGET = [3, 1, 2, 2, 4]
ALLOWED = [2, 2, 3, 3, 5, 5]  # tokens allowed to be out by the end of each frame


def _scripted_joint(enc, pred):
    """Emits TARGET[n] while n < ALLOWED[t], else blank; enc = [t], pred = [n]."""
    t, n = int(enc[0]), int(pred[0])
    logits = np.zeros(5)
    logits[TARGET[n] if n < min(ALLOWED[t], len(TARGET)) else 0] = 10.0
    return logits


def _counter_step(token, state):
    n = state + (token != 0)
    return np.array([n], np.float64), n


def test_scripted_joint_decodes_known_sequence():
    enc = np.arange(6, dtype=np.float64)[:, None]
    assert greedy_steps(enc, _counter_step, _scripted_joint, 0) == TARGET
    # One symbol per frame: frame 0 emits one, frame 1 the second, ... still all five.
    assert greedy_steps(enc, _counter_step, _scripted_joint, 0, max_symbols_per_frame=1) == TARGET
    assert beam_search(enc, _counter_step, _scripted_joint, 0, beam=3)[0] == TARGET

    # The same script as TF callables through the batched decoder.
    target = tf.constant(TARGET + [0], tf.int32)
    allowed = tf.constant(ALLOWED, tf.int32)

    def pred_fn(tokens, state):
        n = state + tf.cast(tokens != 0, tf.int32)
        return tf.cast(n[:, None], tf.float32), n

    def joint_fn(enc, pred):
        t, n = tf.cast(enc[:, 0], tf.int32), tf.cast(pred[:, 0], tf.int32)
        k = tf.where(n < tf.gather(allowed, t), tf.gather(target, n), 0)
        return 10.0 * tf.one_hot(k, 5)

    enc_b = tf.constant(np.stack([np.arange(6), np.arange(6)])[..., None], tf.float32)
    ids, lengths = greedy_decode_batch(enc_b, [6, 3], pred_fn, joint_fn, tf.zeros([2], tf.int32))
    assert ids_to_lists(ids, lengths) == [TARGET, TARGET[:3]]


def _best_sequence_brute_force(enc, net, vocab):
    """Exact argmax over token sequences of P(seq) = sum over one-symbol-per-frame alignments."""
    scores = {}
    for steps in itertools.product(range(vocab), repeat=len(enc)):
        h = net.pred_step(0, np.zeros(net.pred_dim))[0]
        total, tokens = 0.0, []
        for frame, k in zip(enc, steps):
            total += _log_softmax(net.joint(frame, h))[k]
            if k != 0:
                tokens.append(k)
                h = net.pred_step(k, h)[0]
        key = tuple(tokens)
        scores[key] = np.logaddexp(scores.get(key, -np.inf), total)
    best = max(scores, key=scores.get)
    return list(best), scores[best]


def test_beam_search():
    net = RandomTransducer(2, vocab=3, blank_bias=0.5)
    enc = np.random.default_rng(3).normal(size=(4, net.dim))
    # beam 1 is greedy with one symbol per frame.
    assert beam_search(enc, net.pred_step, net.joint, np.zeros(net.pred_dim), beam=1)[
        0
    ] == greedy_steps(
        enc, net.pred_step, net.joint, np.zeros(net.pred_dim), max_symbols_per_frame=1
    )
    # A beam wider than the number of hypotheses (<= 1 + 2 + 4 + 8 + 16) is exact.
    tokens, score = beam_search(enc, net.pred_step, net.joint, np.zeros(net.pred_dim), beam=32)
    best, best_score = _best_sequence_brute_force(enc, net, 3)
    assert tokens == best
    np.testing.assert_allclose(score, best_score, atol=1e-12)


# --------------------------------------------------------------------------
# Metrics


def test_error_counts_and_rates():
    assert error_counts(["a b c"], ["a x c d"]) == {
        "substitutions": 1,
        "deletions": 0,
        "insertions": 1,
        "hits": 2,
        "words": 3,
    }
    assert wer(["a b c"], ["a x c d"]) == pytest.approx(2 / 3)
    assert wer("turn on the light", "turn the lights") == pytest.approx(2 / 4)
    # Corpus level: (1 deletion + 1 insertion) / 6 words, not a mean of rates.
    assert wer(["a b", "c d e f"], ["a", "c d e f g"]) == pytest.approx(2 / 6)
    assert wer(["same words"], ["  same   words "]) == 0.0
    # An empty reference among others: its words are insertions.
    assert wer(["a b", ""], ["a b", "x"]) == pytest.approx(1 / 2)
    assert cer(["abc"], ["abd"]) == pytest.approx(1 / 3)
    assert cer(["ab c"], ["abc"]) == pytest.approx(1 / 4)  # the space is a character
    assert error_counts(["abc"], ["xabc"], unit="char") == {
        "substitutions": 0,
        "deletions": 0,
        "insertions": 1,
        "hits": 3,
        "chars": 3,
    }


def test_per_utterance_errors_add_up_to_the_corpus_counts():
    refs = ["turn on the light", "set a timer for ten minutes", "", "what time is it"]
    hyps = ["turn the lights on", "set timer for ten minutes please", "hello", "what time is it"]
    edits, words = metrics.utterance_errors(refs, hyps)
    c = error_counts(refs, hyps)
    assert edits.sum() == c["substitutions"] + c["deletions"] + c["insertions"] and words.sum() == c["words"]
    assert list(words) == [4, 6, 0, 4] and edits[3] == 0 and edits[2] == 1
    assert edits.sum() / words.sum() == pytest.approx(wer(refs, hyps))


def test_wer_intervals_and_paired_relative_differences():
    rng = np.random.default_rng(0)
    vocab = ["turn", "on", "the", "light", "set", "a", "timer", "what", "time"]
    refs = [" ".join(rng.choice(vocab, size=5)) for _ in range(400)]

    def noisy(p, seed):
        r = np.random.default_rng(seed)
        return [" ".join(w if r.random() > p else "x" for w in ref.split()) for ref in refs]

    worse, base = noisy(0.3, 1), noisy(0.2, 2)
    w = metrics.wer_interval(refs, worse)
    assert w["low"] < w["wer"] < w["high"] and w["wer"] == pytest.approx(wer(refs, worse))
    assert metrics.wer_interval(refs, worse) == w  # seeded
    narrow = metrics.wer_interval(refs * 4, worse * 4)
    assert narrow["high"] - narrow["low"] < 0.7 * (w["high"] - w["low"])  # more utterances, tighter
    d = metrics.relative_difference(refs, base, worse)
    assert d["relative"] == pytest.approx((wer(refs, worse) - wer(refs, base)) / wer(refs, base))
    assert 0 < d["low"] < d["relative"] < d["high"]  # 30% vs 20% word errors: a real difference
    same = metrics.relative_difference(refs, base, base)
    assert same["relative"] == same["low"] == same["high"] == 0.0
    assert metrics.relative_difference(refs, refs, worse)["relative"] is None  # a perfect base


def test_metric_errors():
    with pytest.raises(ValueError, match="every reference is empty"):
        wer(["", " "], ["a", "b"])
    with pytest.raises(ValueError, match="every reference is empty"):
        cer([""], ["a"])
    with pytest.raises(ValueError, match="at least one reference"):
        wer([], [])
    with pytest.raises(ValueError, match="2 references and 1 hypotheses"):
        wer(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="strings"):
        wer(["a"], [None])
    with pytest.raises(ValueError, match="unit"):
        error_counts(["a"], ["a"], unit="phone")
