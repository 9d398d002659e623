"""export_tflite of models that mix GQ with tfmot's default 8-bit QAT, made with
tfmot's own API: GQ layers packed, 8-bit layers int8 builtins, parity with Keras
in LiteRT and tf.lite (with the GQ delegate); clear errors for other tfmot models."""

import warnings

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import converters
import gq_tf
from converters import export, flatbuf
from gq_tf import keras

qk = tfmot.quantization.keras
RUNTIMES = ("litert", "tflite")


def run_tflite(path, x, runtime):
    interpreter = converters.make_interpreter(path, runtime=runtime, kernel="reference")
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def issue_example():
    """GQ 'a' (tfmot's API with gq_tf's config) -> tfmot 8-bit 'b' -> float 'c'."""
    inp = keras.Input((20,), name="x")
    x = qk.quantize_annotate_layer(keras.layers.Dense(32, activation="relu", name="a"),
                                   quantize_config=gq_tf.GQQuantizeConfig({"kernel": gq_tf.GeneralQuantizer(3)}))(inp)
    x = qk.quantize_annotate_layer(keras.layers.Dense(16, name="b"))(x)
    out = keras.layers.Dense(8, name="c")(x)
    return keras.Model(inp, out)


def sequence_example():
    """tfmot 8-bit 'd0' -> GQ LSTM -> GQ attention -> GQ 'g' -> tfmot 8-bit 'b'."""
    inp = keras.Input((6, 20), name="x")
    x = qk.quantize_annotate_layer(keras.layers.Dense(16, name="d0"))(inp)
    x = gq_tf.quantize_annotate_layer(keras.layers.LSTM(32, return_sequences=True, name="lstm"),
                                      {"kernel": 4, "recurrent_kernel": 2})(x)
    x = gq_tf.quantize_annotate_layer(keras.layers.MultiHeadAttention(2, 8, name="mha"), 4)(x, value=x)
    x = gq_tf.quantize_annotate_layer(keras.layers.Dense(24, activation="tanh", name="g"), 3)(x)
    out = qk.quantize_annotate_layer(keras.layers.Dense(16, name="b"))(x)
    return keras.Model(inp, out)


def train(qat, shape, out_dim, seed=0):
    """A few epochs on a learnable target, so that the outputs (and the learned
    ranges) are not degenerate."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256,) + shape).astype(np.float32)
    w = rng.normal(size=(shape[-1], out_dim)).astype(np.float32) / np.sqrt(shape[-1])
    y = np.tanh(x @ w)
    qat.compile(keras.optimizers.Adam(3e-3), "mse")
    qat.fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[gq_tf.GQAnnealing(anneal_every=8)])
    return x


def export_quietly(qat, path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = converters.export_tflite(qat, path)
    return report, [str(w.message) for w in caught]


def rows(report):
    return {r.key: r for r in report.kernels}


def int8_ops(path):
    """(op name, input type, weight type) of the builtin ops with int8 weights."""
    model = flatbuf.read(open(path, "rb").read())
    out = []
    for sub in model.subgraphs:
        for op in sub.operators:
            code = flatbuf.builtin_code(model, op)
            if code in flatbuf.WEIGHT_INPUTS:
                w = sub.tensors[op.inputs[1]].type
                if w == flatbuf.schema.TensorType.INT8:
                    out.append((flatbuf.op_name(model, op), sub.tensors[op.inputs[0]].type))
    return out


def int8_step(path):
    """The largest int8 step of an activation the graph dequantizes."""
    model = flatbuf.read(open(path, "rb").read())
    sub = model.subgraphs[0]
    return max(float(sub.tensors[op.inputs[0]].quantization.scale[0]) for op in sub.operators
               if flatbuf.op_name(model, op) == "DEQUANTIZE")


def assert_parity(qat, path, x, gain=1.0):
    """``gain``: how much a float layer after the last int8 activation can grow
    its error (the largest column L1 norm of its kernel); 1 if there is none."""
    keras_out = qat(x, training=False).numpy()
    scale = float(np.abs(keras_out).max())
    assert scale > 0.05  # a model whose output says something
    step = int8_step(path) * gain
    for runtime in RUNTIMES:
        got = run_tflite(path, x, runtime)
        # The int8 kernels' error: an int8 output rounds like tfmot's fake
        # quantization up to one output step (an int8 input quantized at run
        # time, or an int8 accumulation, can land on the other side of a step).
        np.testing.assert_allclose(got, keras_out, atol=1.01 * step + 1e-4 * scale, rtol=0, err_msg=runtime)
        if gain == 1.0:  # most int8 outputs are the same step
            assert np.mean(np.abs(got - keras_out) <= 1e-4 * scale + 1e-6) > 0.5, runtime


@pytest.mark.parametrize("scheme", ["gq", "tfmot"])
def test_issue_example_trains_saves_exports_and_runs(tmp_path, scheme):
    with gq_tf.quantize_scope():
        if scheme == "gq":
            qat = qk.quantize_apply(issue_example(), gq_tf.QuantizeScheme())
        else:
            qat = qk.quantize_apply(issue_example())  # tfmot's default scheme, as in the issue
    x = train(qat, (20,), 8)
    gq_tf.save_qat(qat, tmp_path / "saved")
    loaded = gq_tf.load_qat(tmp_path / "saved")
    report, messages = export_quietly(loaded, str(tmp_path / "m.tflite"))
    got = rows(report)
    assert got["a/kernel"].deployed == export.PACKED and got["a/kernel"].bits == 3
    assert got["b/kernel"].method == "tfmot8" and got["b/kernel"].bits == 8
    assert got["c/kernel"].deployed == export.FLOAT
    assert report.op_counts.get("GQ_FULLY_CONNECTED") == 1
    if scheme == "gq":
        # The GQ layer's learned output range is b's input range: a full int8 op.
        assert got["b/kernel"].deployed == export.TFMOT_INT8 and not messages
        assert int8_ops(report.path) == [("FULLY_CONNECTED", flatbuf.schema.TensorType.INT8)]
    else:
        # tfmot's own scheme learns no range after a GQ layer: int8 weights,
        # dynamic-range input, and a warning that says why.
        assert got["b/kernel"].deployed == export.INT8
        assert int8_ops(report.path) == [("FULLY_CONNECTED", flatbuf.schema.TensorType.FLOAT32)]
        assert any("b/kernel" in m and "gq_tf.QuantizeScheme" in m for m in messages)
    assert got["b/kernel"].nbytes == 32 * 16 + 4
    c_kernel = next(layer for layer in loaded.layers if layer.name == "c").kernel.numpy()
    assert_parity(loaded, report.path, x[:1], gain=float(np.abs(c_kernel).sum(axis=0).max()))


def test_lstm_and_attention_with_8bit_layers(tmp_path):
    with gq_tf.quantize_scope():
        qat = qk.quantize_apply(sequence_example(), gq_tf.QuantizeScheme())
    x = train(qat, (6, 20), 16)
    gq_tf.save_qat(qat, tmp_path / "saved")
    loaded = gq_tf.load_qat(tmp_path / "saved")
    np.testing.assert_array_equal(loaded(x[:4], training=False).numpy(), qat(x[:4], training=False).numpy())
    report, _ = export_quietly(loaded, str(tmp_path / "m.tflite"))
    got = rows(report)
    assert got["lstm/kernel"].deployed == export.PACKED_LSTM
    assert {got[f"mha/{w}"].deployed for w in ("query", "key", "value", "output")} == {export.PACKED}
    assert got["g/kernel"].deployed == export.PACKED
    assert got["d0/kernel"].deployed == export.TFMOT_INT8  # reads the model input through tfmot's QuantizeLayer
    assert got["b/kernel"].method == "tfmot8" and got["b/kernel"].deployed in (export.TFMOT_INT8, export.INT8)
    assert report.op_counts["GQ_LSTM"] == 1 and report.op_counts["GQ_FULLY_CONNECTED"] == 5
    assert_parity(loaded, report.path, x[:1])


def test_policy_made_mixed_model(tmp_path):
    inp = keras.Input((20,), name="x")
    x = keras.layers.Dense(32, activation="relu", name="a")(inp)
    x = keras.layers.Dense(32, activation="relu", name="b")(x)
    out = keras.layers.Dense(8, name="head")(x)
    qat = gq_tf.quantize_model(keras.Model(inp, out), {"head": gq_tf.Tfmot8Bit(), ".*": 2})
    x = train(qat, (20,), 8)
    report, messages = export_quietly(qat, str(tmp_path / "m.tflite"))
    got = rows(report)
    assert [got[k].deployed for k in ("a/kernel", "b/kernel", "head/kernel")] == \
        [export.PACKED, export.PACKED, export.TFMOT_INT8]
    assert not messages
    assert_parity(qat, report.path, x[:1])


def test_plain_tfmot_qat_gets_a_clear_error(tmp_path):
    inp = keras.Input((20,))
    qat = qk.quantize_model(keras.Model(inp, keras.layers.Dense(8, name="d")(inp)))
    with pytest.raises(ValueError, match="plain tfmot QAT model.*TFLiteConverter.*gq_tf.quantize_model"):
        converters.export_tflite(qat, str(tmp_path / "m.tflite"))
    assert not (tmp_path / "m.tflite").exists()


def _with_gq(wrap):
    """A GQ layer, then a layer wrapped by ``wrap``."""
    inp = keras.Input((20,))
    x = keras.layers.Dense(16, name="g")(inp)
    model = gq_tf.quantize_model(keras.Model(inp, keras.layers.Dense(8, name="d")(x)), {"g": 4})
    return wrap(model)


@pytest.mark.parametrize("make,match", [
    (lambda: tfmot.sparsity.keras.prune_low_magnitude(
        keras.Sequential([keras.Input((20,)), keras.layers.Dense(8, name="d")])),
     "'prune_low_magnitude_d'.*PruneLowMagnitude.*strip_pruning"),
    (lambda: tfmot.clustering.keras.cluster_weights(
        keras.Sequential([keras.Input((20,)), keras.layers.Dense(8, name="d")]), number_of_clusters=4),
     "'cluster_d'.*ClusterWeights.*strip_clustering"),
])
def test_pruning_and_clustering_wrappers_get_a_clear_error(tmp_path, make, match):
    with pytest.raises(ValueError, match=match):
        converters.export_tflite(make(), str(tmp_path / "m.tflite"))


def test_experimental_scheme_gets_a_clear_error(tmp_path):
    inp = keras.Input((20,))
    x = gq_tf.quantize_annotate_layer(keras.layers.Dense(16, name="g"), 4)(inp)
    x = qk.quantize_annotate_layer(keras.layers.Dense(8, name="d"))(x)
    with gq_tf.quantize_scope():
        qat = qk.quantize_apply(keras.Model(inp, x), qk.experimental.default_n_bit.DefaultNBitQuantizeScheme(
            num_bits_weight=4, num_bits_activation=4))
    with pytest.raises(ValueError, match="num_bits=4 \\(an experimental tfmot scheme\\)"):
        converters.export_tflite(qat, str(tmp_path / "m.tflite"))
