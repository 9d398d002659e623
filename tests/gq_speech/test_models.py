"""ASR transducers: training graph, streaming step graphs, QAT weight copy, streaming export.

Uses the tiny configs (16 mel bins). Tolerances:
- Keras streaming vs full model, float32: 1e-5. The step graphs run the same
  layers on the same values; only the extent of some reductions differs
  (attention over a cache instead of the whole masked sequence, where the
  masked terms are exactly 0), so differences are a few float32 ulps of
  O(1) activations (measured: 0 to 1e-6).
- .tflite (delegate ``kernel="reference"``, exact float32 GQ kernels) vs the
  Keras step models: atol = rtol = 1e-5, the same float32-reordering argument
  (measured <= 1e-6).
- .tflite with the default kernels, which round every GQ op's input
  activations to int8 per row (docs/EXPORT.md): 5% of the output's range.
  One int8 step is 0.8% of a row's range; through the chained layers of these
  untrained models the measured error is <= 1.3% of the range (LayerNorm
  amplifies it in the Conformer). A wrong weight or state mapping gives errors
  of the order of the range itself.
"""

import json
import os

import numpy as np
import pytest

import gq_tf
from gq_speech import deploy, models
from gq_tf._keras import keras, tf
from gq_tf.codebooks import quantized_weights
from tests.support.asrmodels import emitting_net

KINDS = ["rnnt", "conformer"]
POLICY = {"encoder_lstm_.*": {"kernel": 4, "recurrent_kernel": 2}, "joint.*": 8, ".*": 5}
FLOAT32_TOL = 1e-5


def _cfg(kind):
    return models.load_config(f"{kind}_tiny")


def _harden(qat, seed=0):
    """Moves every quantizer away from its initial values, as training with annealing would.

    Centroids and scales change and the annealing state reads step 500, the
    final temperature, hard phase: a copy that misses any of them shows.
    """
    rng = np.random.default_rng(seed)
    for qw in quantized_weights(qat):
        if "theta" in qw.qvars:
            theta = qw.qvars["theta"].numpy()
            step = 2.0 / theta.size  # the initial spacing: jitter by up to a quarter of it
            qw.qvars["theta"].assign(theta + rng.uniform(-0.25, 0.25, theta.size).astype(np.float32) * step)
            qw.qvars["scale"].assign(qw.qvars["scale"] * 0.95)
            qw.qvars["state"].assign([500.0, 0.01, 1.0])


def _stream_encoder(step, features, cfg):
    """[T, n_mels] -> [T', D] through the Keras encoder step model (T a multiple of chunk_frames)."""
    states = models.initial_states(cfg)["encoder"]
    c, out = cfg.chunk_frames, []
    for k in range(len(features) // c):
        res = step({"features": features[None, k * c:(k + 1) * c], **states}, training=False)
        out.append(res["encoder_out"].numpy()[0])
        states = {n: res[n].numpy() for n in states}
    return np.concatenate(out)


def _stream_prediction(step, tokens, cfg):
    states = models.initial_states(cfg)["prediction"]
    out = []
    for t in tokens:
        res = step({"token": np.array([[t]], np.int32), **states}, training=False)
        out.append(res["pred_out"].numpy()[0])
        states = {n: res[n].numpy() for n in states}
    return np.stack(out)


def _random_feeds(model, cfg, rng):
    feeds = {}
    for inp in model.inputs:
        name = inp.name.split(":")[0]
        if inp.dtype == tf.int32:
            feeds[name] = rng.integers(0, cfg.vocab_size, size=inp.shape).astype(np.int32)
        elif name == "attention_valid":  # a 0/1 mask
            feeds[name] = (rng.random(inp.shape) < 0.5).astype(np.float32)
        else:
            feeds[name] = rng.normal(size=inp.shape).astype(np.float32)
    return feeds


def _features(cfg, frames, seed):
    return np.random.default_rng(seed).normal(size=(frames, cfg.n_mels)).astype(np.float32)


@pytest.fixture(scope="module", params=KINDS)
def float_setup(request):
    cfg = _cfg(request.param)
    net = emitting_net(cfg)
    steps = models.build_step_models(cfg)
    models.copy_weights(net, steps)
    return cfg, net, steps


@pytest.fixture(scope="module", params=KINDS)
def qat_setup(request, tmp_path_factory):
    cfg = _cfg(request.param)
    qat = gq_tf.quantize_model(emitting_net(cfg), POLICY)
    _harden(qat)
    steps = models.quantize_step_models(models.build_step_models(cfg), POLICY)
    models.copy_weights(qat, steps)
    out = deploy.export_streaming(qat, cfg, tmp_path_factory.mktemp(f"{cfg.kind}_gq"))
    return cfg, qat, steps, out


# ----------------------------------------------------------------- configs


def test_configs_load_round_trip_and_stream():
    for name in ("rnnt_tiny", "rnnt_small", "rnnt", "conformer_tiny", "conformer_small", "conformer"):
        cfg = models.load_config(name)
        assert cfg.name == name
        assert models.ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        assert cfg.chunk_frames % models.reduction(cfg) == 0
        assert models.reduction(cfg) == 4
        if not name.endswith("tiny"):
            assert cfg.n_mels == 80 and cfg.vocab_size == 29 and "s/step" in cfg.notes


def test_config_errors_name_the_problem(tmp_path):
    good = models.load_config("rnnt_tiny").to_dict()
    with pytest.raises(ValueError, match="chunk_frames"):
        models.ModelConfig.from_dict({**good, "chunk_frames": 6})
    with pytest.raises(ValueError, match="unknown keys"):
        models.ModelConfig.from_dict({**good, "encoder": {**good["encoder"], "units": 3}})
    with pytest.raises(ValueError, match="kind"):
        models.ModelConfig.from_dict({**good, "kind": "ctc"})
    with pytest.raises(ValueError, match="stack_after"):
        models.ModelConfig.from_dict({**good, "encoder": {**good["encoder"], "stack_after": [2]}})
    # Found by tests/support/fuzz_entry.py (recipe target): these were TypeErrors.
    with pytest.raises(ValueError, match=r"to have the keys \['chunk_frames'\]"):
        models.ModelConfig.from_dict({k: v for k, v in good.items() if k != "chunk_frames"})
    with pytest.raises(ValueError, match="stack_after to be a list"):
        models.ModelConfig.from_dict({**good, "encoder": {**good["encoder"], "stack_after": 0.1}})
    with pytest.raises(ValueError, match=r"joint_dim to be an int in \[1, 65536\]"):
        models.ModelConfig.from_dict({**good, "joint_dim": 2**63})
    with pytest.raises(ValueError, match="Expected name to be a string"):  # found by fuzzing: a TypeError later
        models.ModelConfig.from_dict({**good, "name": 2})
    with pytest.raises(FileNotFoundError, match="rnnt_tiny"):
        models.load_config("no_such_model")
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "name"}))
    assert models.load_config(str(path)).name == "mine"


def test_encoder_lengths():
    cfg = _cfg("rnnt")
    np.testing.assert_array_equal(models.encoder_lengths(np.array([1, 4, 5, 45, 48]), cfg), [1, 1, 2, 12, 12])


# ----------------------------------------------------------------- training graph


def test_training_model_shapes_and_names(float_setup):
    cfg, net, _ = float_setup
    frames, labels = 45, 6  # 45: not a multiple of the reduction
    x = _features(cfg, frames * 2, 0).reshape(2, frames, cfg.n_mels)
    y = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, labels + 1)).astype(np.int32)
    logits = net([x, y])
    assert logits.shape == (2, int(models.encoder_lengths(frames, cfg)), labels + 1, cfg.vocab_size)
    names = {layer.name for layer in net.layers}
    expected = {"pred_embedding", "pred_lstm_0", "joint_enc", "joint_pred", "joint_out"}
    if cfg.kind == "rnnt":
        expected |= {"encoder_lstm_0", "encoder_lstm_1", "encoder_proj"}
    else:
        expected |= {"subsample_conv_0", "subsample_conv_1", "conformer_0_ff1_dense1", "conformer_0_mhsa",
                     "conformer_0_conv_pw1", "conformer_0_conv_dw", "conformer_1_ff2_dense2"}
    assert expected <= names
    # Every layer with weights is quantizable by gq_tf or a norm that stays float.
    from gq_tf.configs import FLOAT_LAYERS, LAYER_TABLE

    assert all(type(layer) in LAYER_TABLE or isinstance(layer, FLOAT_LAYERS) for layer in net.layers if layer.weights)


def test_models_and_helper_layers_round_trip_through_json(float_setup):
    cfg, net, steps = float_setup
    for model in (net, *steps.values()):
        clone = keras.models.model_from_json(model.to_json())
        clone.set_weights(model.get_weights())
        feeds = _random_feeds(model, cfg, np.random.default_rng(6)) if model is not net else [
            _features(cfg, 16, 6)[None], np.array([[0, 3, 4]], np.int32)]
        a, b = model(feeds), clone(feeds)
        for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
            np.testing.assert_array_equal(x.numpy(), y.numpy())
    for layer in (models.FeatureNormalization([1.0, 2.0], [0.5, 4.0]), models.LeftPad(2), models.FrameStacking(3),
                  models.ChunkAttentionMask(2, 1), models.StepAttentionMask(2), models.TakeLast(4), models.GLU(),
                  models.ScaledResidual(0.5), models.JointCombine()):
        config = keras.utils.serialize_keras_object(layer)
        assert keras.utils.deserialize_keras_object(config).get_config() == layer.get_config()


def test_feature_normalization_uses_the_stats():
    from gq_speech.features import FeatureStats

    base = _cfg("rnnt")
    rng = np.random.default_rng(0)
    stats = FeatureStats(rng.normal(size=base.n_mels), rng.uniform(0.5, 2.0, base.n_mels))
    cfg = base.with_feature_stats(stats)
    layer = models.FeatureNormalization(cfg.feature_mean, cfg.feature_std)
    x = rng.normal(size=(2, 5, cfg.n_mels)).astype(np.float32)
    np.testing.assert_allclose(layer(x).numpy(), stats.apply(x), rtol=1e-5, atol=1e-6)
    assert models.ModelConfig.from_dict(cfg.to_dict()) == cfg
    # Step models built from another normalization refuse the weights.
    with pytest.raises(ValueError, match="feature normalization"):
        models.copy_weights(models.build_training_model(cfg), models.build_step_models(base))


# ----------------------------------------------------------------- Keras streaming == full model


def test_encoder_steps_equal_full_encoder(float_setup):
    cfg, net, steps = float_setup
    x = _features(cfg, 6 * cfg.chunk_frames, 1)  # 6 chunks: more than left context + 1
    full = models.split_training_model(net)["encoder"](x[None]).numpy()[0]
    streamed = _stream_encoder(steps["encoder"], x, cfg)
    assert streamed.shape == full.shape
    np.testing.assert_allclose(streamed, full, atol=FLOAT32_TOL, rtol=FLOAT32_TOL)


def test_encoder_is_causal_by_chunks(float_setup):
    """A change in chunk k changes encoder frames of chunk k on, never before (the masks and pads work)."""
    cfg, net, _ = float_setup
    enc = models.split_training_model(net)["encoder"]
    x = _features(cfg, 6 * cfg.chunk_frames, 2)
    y = x.copy()
    y[3 * cfg.chunk_frames + 1] += 5.0
    a, b = enc(x[None]).numpy()[0], enc(y[None]).numpy()[0]
    per_chunk = cfg.chunk_frames // models.reduction(cfg)
    np.testing.assert_array_equal(a[: 3 * per_chunk], b[: 3 * per_chunk])
    assert np.abs(a[3 * per_chunk:] - b[3 * per_chunk:]).max() > 1e-3


def test_prediction_steps_equal_teacher_forced(float_setup):
    cfg, net, steps = float_setup
    tokens = np.array([0, 5, 3, 3, 28, 1, 7], np.int32)
    full = models.split_training_model(net)["prediction"](tokens[None]).numpy()[0]
    np.testing.assert_allclose(_stream_prediction(steps["prediction"], tokens, cfg), full,
                               atol=FLOAT32_TOL, rtol=FLOAT32_TOL)


def test_joint_step_equals_training_joint(float_setup):
    cfg, net, steps = float_setup
    rng = np.random.default_rng(3)
    x = _features(cfg, 2 * cfg.chunk_frames, 3)
    tokens = rng.integers(0, cfg.vocab_size, 4).astype(np.int32)
    logits = net([x[None], tokens[None]]).numpy()[0]
    subs = models.split_training_model(net)
    enc, pred = subs["encoder"](x[None]).numpy()[0], subs["prediction"](tokens[None]).numpy()[0]
    step = steps["joint"]({"enc": enc[2:3], "pred": pred[1:2]})["logits"].numpy()[0]
    np.testing.assert_allclose(step, logits[2, 1], atol=FLOAT32_TOL, rtol=FLOAT32_TOL)


# ----------------------------------------------------------------- QAT


def test_qat_copy_weights_copies_quantizer_state(qat_setup):
    cfg, qat, steps, _ = qat_setup
    source = {qw.key: qw for qw in quantized_weights(qat)}
    copied = [qw for m in steps.values() for qw in quantized_weights(m)]
    assert {qw.key for qw in copied} == set(source)  # every kernel quantized the same way
    for qw in copied:
        src = source[qw.key]
        assert type(qw.quantizer) is type(src.quantizer) and qw.quantizer.bits == src.quantizer.bits
        np.testing.assert_array_equal(qw.variable.numpy(), src.variable.numpy())
        for name, var in src.qvars.items():
            np.testing.assert_array_equal(qw.qvars[name].numpy(), var.numpy(), err_msg=f"{qw.key} {name}")
    assert source["joint_out/kernel"].quantizer.bits == 8
    if cfg.kind == "rnnt":
        assert source["encoder_lstm_0/recurrent_kernel"].quantizer.bits == 2


def test_qat_streaming_equals_qat_model(qat_setup):
    cfg, qat, steps, _ = qat_setup
    subs = models.split_training_model(qat)
    x = _features(cfg, 5 * cfg.chunk_frames, 4)
    np.testing.assert_allclose(_stream_encoder(steps["encoder"], x, cfg), subs["encoder"](x[None]).numpy()[0],
                               atol=FLOAT32_TOL, rtol=FLOAT32_TOL)
    tokens = np.array([0, 9, 2, 2, 17], np.int32)
    np.testing.assert_allclose(_stream_prediction(steps["prediction"], tokens, cfg),
                               subs["prediction"](tokens[None]).numpy()[0], atol=FLOAT32_TOL, rtol=FLOAT32_TOL)


def test_copy_weights_refuses_mixed_float_and_qat(qat_setup):
    cfg, qat, _, _ = qat_setup
    with pytest.raises(ValueError, match="quantized in both models or in neither"):
        models.copy_weights(qat, models.build_step_models(cfg))
    with pytest.raises(ValueError, match="Expected a layer named"):
        models.copy_weights(models.split_training_model(emitting_net(cfg))["encoder"],
                            models.build_step_models(cfg)["joint"])


def test_policy_from_qat_reproduces_the_quantization(qat_setup):
    cfg, qat, _, _ = qat_setup
    steps = models.quantize_step_models(models.build_step_models(cfg), models.policy_from_qat(qat))
    got = {qw.key: (type(qw.quantizer), qw.quantizer.bits) for m in steps.values() for qw in quantized_weights(m)}
    assert got == {qw.key: (type(qw.quantizer), qw.quantizer.bits) for qw in quantized_weights(qat)}


# ----------------------------------------------------------------- export


def test_export_packs_gq_ops_and_writes_manifest(qat_setup):
    from converters.runtime import custom_ops

    cfg, _, _, out = qat_setup
    assert set(out.paths) == {"encoder", "prediction", "joint", deploy.MANIFEST}
    encoder_ops = {"rnnt": {"GQ_LSTM", "GQ_FULLY_CONNECTED"}, "conformer": {"GQ_FULLY_CONNECTED"}}[cfg.kind]
    assert set(custom_ops(out.paths["encoder"])) == encoder_ops
    assert custom_ops(out.paths["prediction"]) == ["GQ_LSTM"]
    assert custom_ops(out.paths["joint"]) == ["GQ_FULLY_CONNECTED"]
    for part, report in out.reports.items():
        packed = [k for k in report.kernels if k.packed]
        assert packed, part
        # Only the embedding table and depthwise kernels have no packed op yet.
        assert all(k.packed or k.key.startswith("pred_embedding") or "_conv_dw" in k.key for k in report.kernels)
    manifest = deploy.load_manifest(os.path.dirname(out.paths[deploy.MANIFEST]))
    assert models.ModelConfig.from_dict(manifest["config"]) == cfg
    specs = models.state_specs(cfg)
    for part in ("encoder", "prediction"):
        graph = manifest["graphs"][part]
        assert graph["states"] == list(specs[part])
        shapes = {row["name"]: tuple(row["shape"]) for row in graph["inputs"]}
        assert {n: shapes[n] for n in specs[part]} == specs[part]
        main = {"encoder": "encoder_out", "prediction": "pred_out"}[part]
        assert {row["name"] for row in graph["outputs"]} == set(specs[part]) | {main}
    assert manifest["graphs"]["encoder"]["inputs"][0]["tensor"]  # tflite tensor names recorded
    assert out.packed_bytes > 0 and out.total_bytes == sum(r.size_bytes for r in out.reports.values())


@pytest.mark.parametrize("kernel, tol", [("reference", None), ("auto", 0.05)])
def test_tflite_steps_equal_keras_steps(qat_setup, kernel, tol):
    cfg, _, steps, out = qat_setup
    rng = np.random.default_rng(5)
    for part in deploy.PARTS:
        feeds = _random_feeds(steps[part], cfg, rng)
        want = {k: v.numpy() for k, v in steps[part](feeds, training=False).items()}
        got = deploy._TFLiteGraph(out.paths[part], kernel=kernel)(feeds)
        assert set(got) == set(want)
        for name, value in want.items():
            if tol is None:
                np.testing.assert_allclose(got[name], value, atol=FLOAT32_TOL, rtol=FLOAT32_TOL,
                                           err_msg=f"{part}/{name}")
            else:
                assert np.abs(got[name] - value).max() <= tol * np.abs(value).max(), f"{part}/{name}"


@pytest.mark.parametrize("kind", KINDS)
def test_uniform_8bit_streaming_export_equals_keras_steps(kind, tmp_path):
    """Uniform QAT exports int8 hybrid builtins (the Conformer's depthwise convolution too)."""
    cfg = _cfg(kind)
    policy = {".*": gq_tf.Uniform(8)}
    qat = gq_tf.quantize_model(emitting_net(cfg), policy)
    steps = models.quantize_step_models(models.build_step_models(cfg), policy)
    models.copy_weights(qat, steps)
    out = deploy.export_streaming(qat, cfg, tmp_path)
    rng = np.random.default_rng(5)
    for part in deploy.PARTS:
        feeds = _random_feeds(steps[part], cfg, rng)
        want = {k: v.numpy() for k, v in steps[part](feeds, training=False).items()}
        got = deploy._TFLiteGraph(out.paths[part])(feeds)
        for name, value in want.items():
            # Dynamic-range int8 activations: about 1% per layer.
            assert np.abs(got[name] - value).max() <= 0.05 * np.abs(value).max(), f"{part}/{name}"


def test_streaming_recognizer_matches_keras(qat_setup):
    cfg, _, steps, out = qat_setup
    directory = os.path.dirname(out.paths[deploy.MANIFEST])
    tfl = deploy.StreamingRecognizer(directory, kernel="reference")
    ker = deploy.KerasStreamingRecognizer(steps, cfg)
    emitted = saturated = 0
    for seed, frames in ((10, 45), (11, 37), (12, 16)):
        x = _features(cfg, frames, seed)
        tfl.reset()
        ker.reset()
        new_t, new_k = [], []
        for start in range(0, frames, 7):  # pieces that do not align with chunks
            new_t += tfl.push(x[start:start + 7])
            new_k += ker.push(x[start:start + 7])
        tokens = tfl.finish()
        assert tokens == ker.finish() and new_t == new_k and tokens[: len(new_t)] == new_t
        emitted += len(tokens)
        saturated += int(models.encoder_lengths(frames, cfg)) * 5  # 5 symbols on every frame
    assert 0 < emitted < saturated
    assert len(tfl.timings["encoder"]) == sum(-(-f // cfg.chunk_frames) for f in (45, 37, 16))
    assert tfl.timings["joint"] and all(t > 0 for t in tfl.timings["prediction"])


def test_export_float_and_int8_baselines(tmp_path):
    from converters.runtime import custom_ops

    cfg = _cfg("rnnt")
    net = emitting_net(cfg, seed=1)
    steps = models.build_step_models(cfg)
    models.copy_weights(net, steps)
    sizes = {}
    for kind in ("float", "int8"):
        out = deploy.export_streaming(net, cfg, tmp_path / kind, kind=kind)
        sizes[kind] = out.total_bytes
        for part in deploy.PARTS:
            assert custom_ops(out.paths[part]) == []
            assert "WHILE" not in out.reports[part].op_counts  # unrolled LSTM steps
    assert sizes["int8"] < sizes["float"]
    rec = deploy.StreamingRecognizer(tmp_path / "float")
    ker = deploy.KerasStreamingRecognizer(steps, cfg)
    x = _features(cfg, 40, 20)
    rec.push(x)
    ker.push(x)
    assert rec.finish() == ker.finish()
    with pytest.raises(ValueError, match="QAT model"):
        deploy.export_streaming(net, cfg, tmp_path / "gq", kind="gq")
    with pytest.raises(ValueError, match="kind"):
        deploy.export_streaming(net, cfg, tmp_path / "x", kind="fp16")


@pytest.mark.parametrize("qat_setup", ["conformer"], indirect=True)
def test_conformer_step_projects_each_frame_once(qat_setup):
    """Keys and values of earlier chunks come from the state: no projection in the exported encoder
    runs on more rows than the chunk has frames, and CachedAttention equals attention over the cached inputs."""
    from converters import flatbuf

    cfg, _, _, out = qat_setup
    chunk = cfg.chunk_frames // models.SUBSAMPLING
    with open(out.paths["encoder"], "rb") as f:
        model = flatbuf.read(f.read())
    sub = model.subgraphs[0]
    cached = cfg.encoder.left_chunks * chunk
    rows = [int(np.prod(sub.tensors[op.inputs[0]].shape[:-1])) for op in sub.operators
            if flatbuf.op_name(model, op) in ("GQ_FULLY_CONNECTED", "FULLY_CONNECTED")]
    # Projections (4 per block and more) run on the chunk's frames; the first
    # subsampling convolution on its 10 ms frames; nothing on cached + new.
    assert rows.count(chunk) >= 4 * cfg.encoder.blocks and max(rows) < cached + chunk, rows

    # One block's CachedAttention against keras' MultiHeadAttention with the same weights.
    full = emitting_net(cfg).get_layer("conformer_0_mhsa")
    e = cfg.encoder
    cached_layer = models.CachedAttention(e.heads, e.d_model // e.heads)
    rng = np.random.default_rng(3)
    history = rng.normal(size=(1, cached, e.d_model)).astype(np.float32)
    x = rng.normal(size=(1, chunk, e.d_model)).astype(np.float32)
    mask = np.ones((1, chunk, cached + chunk), np.float32)
    mask[..., : cached // 2] = 0.0
    zeros = np.zeros((1, cached, e.heads, e.d_model // e.heads), np.float32)
    cached_layer([x, zeros, zeros, mask])
    cached_layer.set_weights(full.get_weights())
    keys = full._key_dense(history).numpy()
    values = full._value_dense(history).numpy()
    got, new_keys, new_values = cached_layer([x, keys, values, mask])
    want = full(x, np.concatenate([history, x], axis=1), attention_mask=mask)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=FLOAT32_TOL, rtol=FLOAT32_TOL)
    both = np.concatenate([history, x], axis=1)[:, chunk:]
    np.testing.assert_allclose(new_keys.numpy(), full._key_dense(both).numpy(), atol=FLOAT32_TOL)
    np.testing.assert_allclose(new_values.numpy(), full._value_dense(both).numpy(), atol=FLOAT32_TOL)


def test_streaming_recognizer_takes_its_states_from_the_manifest(qat_setup, tmp_path):
    """An export made before a change of ``state_specs`` keeps working: the zero states are the manifest's."""
    import shutil

    cfg, _, _, out = qat_setup
    src = os.path.dirname(out.paths[deploy.MANIFEST])
    rec = deploy.StreamingRecognizer(src, kernel="reference")
    manifest = deploy.load_manifest(src)
    for part in ("encoder", "prediction"):
        states = deploy.manifest_states(manifest, part)
        assert list(states) == manifest["graphs"][part]["states"]
        shapes = {row["name"]: row["shape"] for row in manifest["graphs"][part]["inputs"]}
        assert all(v.shape == tuple(shapes[k]) and not v.any() for k, v in states.items())
    assert set(rec._states) == set(manifest["graphs"]["encoder"]["states"])
    # A manifest whose state has no input is refused with both names.
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    manifest["graphs"]["encoder"]["states"].append("no_such_state")
    (bad / deploy.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="no_such_state"):
        deploy.StreamingRecognizer(bad, kernel="reference")


def test_split_depthwise_conv_equals_depthwise_conv_in_keras_and_tflite(tmp_path):
    """Taps split into pieces (max_taps=2 on 7 taps: 2 + 2 + 2 + 1) give DepthwiseConv1D's output,
    in Keras, quantized by gq_tf (its kernel is a DepthwiseConv1D kernel) and exported."""
    import converters

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(1, 10, 6)).astype(np.float32)
    inp = keras.Input((10, 6), batch_size=1)
    plain = keras.Model(inp, keras.layers.DepthwiseConv1D(7, padding="valid", name="dw")(inp))
    inp = keras.Input((10, 6), batch_size=1)
    split = keras.Model(inp, models.SplitDepthwiseConv1D(7, padding="valid", max_taps=2, name="dw")(inp))
    split.set_weights(plain.get_weights())
    np.testing.assert_allclose(split(x).numpy(), plain(x).numpy(), atol=FLOAT32_TOL, rtol=FLOAT32_TOL)
    assert models.SplitDepthwiseConv1D.from_config(split.layers[-1].get_config()).max_taps == 2

    qat_plain, qat_split = gq_tf.quantize_model(plain, {"dw": 3}), gq_tf.quantize_model(split, {"dw": 3})
    models.copy_weights(qat_plain, {"m": qat_split})
    want = qat_plain(x).numpy()
    np.testing.assert_allclose(qat_split(x).numpy(), want, atol=FLOAT32_TOL, rtol=FLOAT32_TOL)
    with pytest.warns(converters.NotPackedWarning):
        converters.export_tflite(qat_split, str(tmp_path / "gq.tflite"))
    got = converters.make_interpreter(str(tmp_path / "gq.tflite"), kernel="reference")
    got.set_tensor(got.get_input_details()[0]["index"], x)
    got.invoke()
    np.testing.assert_allclose(got.get_tensor(got.get_output_details()[0]["index"]), want,
                               atol=FLOAT32_TOL, rtol=FLOAT32_TOL)
