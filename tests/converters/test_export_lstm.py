"""GQ_LSTM: Keras LSTMs with packed GQ kernels, exported and run by the delegate.

Tolerances.
- ``kernel="reference"`` computes every product in float32 with the decoded
  centroids, as Keras does, only in another order, and its exp/tanh differ
  from TensorFlow's by a few ulp: the differences are float32 rounding
  (about 1e-7 measured; h and c are O(1)), which the recurrence does not
  amplify (the forget gate is < 1). 1e-4 of the output scale allows that
  with a wide margin and still sees one weight off by one centroid (4e-4
  measured on the wide model, one index of 5,600 changed).
- The default kernels (qd8, gq_fc.h) round x and, at every step, h to int8
  per row (a step of max|row|/127) and the centroids to int8 codes: each gate
  pre-activation moves by up to about sum_i |x_i| * step / 2, a few 1e-3 for
  these sizes, and the gates pass it on with slope <= 1. Measured: 2.4e-3 to
  3.2e-3 on the LSTM models, 9.1e-3 on the mixed model (three more qd8
  layers around the LSTM). 2e-2 of the output scale bounds that and still
  catches a wrong layout or gate order (two gates swapped: 0.14); single
  indices are checked exactly by decoding the file's bytes instead. The qd8
  arithmetic is defined exactly (gq_fc.h), so every SIMD variant gives the
  same numbers: the margin does not depend on the machine.
"""

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import converters
import gq_tf
from converters import export, flatbuf, layout, tfops
from gq_tf import keras
from tests.converters.test_export import random_biases
from tests.support import fuzz_delegate as fz

tf = gq_tf._keras.tf
RUNTIMES = ("litert", "tflite")
TOL = {"reference": 1e-4, "auto": 2e-2}


# ------------------------------------------------------------------ models


def io_model():
    """An LSTM with its initial state as model inputs and its final state as
    outputs (a streaming step), then an LSTM without bias, then a Dense."""
    keras.utils.set_random_seed(0)
    x_in = keras.Input((6, 12), name="x")
    h_in = keras.Input((8,), name="h")
    c_in = keras.Input((8,), name="c")
    y, h, c = keras.layers.LSTM(8, return_sequences=True, return_state=True, name="lstm_io")(
        x_in, initial_state=[h_in, c_in])
    z = keras.layers.LSTM(6, use_bias=False, name="lstm_nobias")(y)
    out = keras.layers.Dense(4, name="head")(z)
    model = keras.Model([x_in, h_in, c_in], [out, y, h, c])
    policy = {"lstm_io": {"kernel": 1, "recurrent_kernel": 8},
              "lstm_nobias": {"kernel": 3, "recurrent_kernel": 2}, "head": 5}
    return random_biases(gq_tf.quantize_model(model, policy))


def wide_model():
    """in = 70 (two weight blocks per row), 4u = 80 and 96; the last LSTM
    returns its last h (return_sequences=False) and its state."""
    keras.utils.set_random_seed(1)
    x_in = keras.Input((5, 70), name="x")
    y = keras.layers.LSTM(20, return_sequences=True, name="lstm_seq")(x_in)
    y, h, c = keras.layers.LSTM(24, return_state=True, name="lstm_last")(y)
    model = keras.Model(x_in, [y, h, c])
    policy = {"lstm_seq": {"kernel": 5, "recurrent_kernel": 4},
              "lstm_last": {"kernel": 7, "recurrent_kernel": 6}}
    return random_biases(gq_tf.quantize_model(model, policy), seed=2)


def feeds(qat, batch, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for inp in qat.inputs:
        name = inp.name.split(":")[0]
        scale = 0.5 if name in ("h", "c") else 1.0
        out[name] = (scale * rng.normal(size=(batch, *inp.shape[1:]))).astype(np.float32)
    return out


def keras_outputs(qat, f):
    outs = qat([f[i.name.split(":")[0]] for i in qat.inputs] if len(qat.inputs) > 1
               else f[qat.inputs[0].name.split(":")[0]], training=False)
    return [o.numpy() for o in (outs if isinstance(outs, (list, tuple)) else [outs])]


def run_tflite(model, f, runtime="litert", kernel="auto"):
    runner = converters.make_interpreter(model, runtime=runtime, kernel=kernel).get_signature_runner()
    out = runner(**f)
    return [out[f"output_{i}"] for i in range(len(out))]


def _export(qat, path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", export.NotPackedWarning)  # everything here must be packed
        return converters.export_tflite(qat, str(path), **kw)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("lstm")
    io, wide = io_model(), wide_model()
    return {
        ("io", 1): (io, _export(io, d / "io_b1.tflite")),
        ("io", 3): (io, _export(io, d / "io_b3.tflite", batch_size=3)),
        ("wide", 2): (wide, _export(wide, d / "wide_b2.tflite", batch_size=2)),
    }


# ------------------------------------------------------- file and report


def test_report_and_file_hold_the_kernels_packed_only(exported):
    for (name, _), (qat, report) in exported.items():
        books = gq_tf.extract_codebooks(qat)
        rows = {r.key: r for r in report.kernels}
        lstm_keys = [k for k in books if "lstm" in k]
        assert len(lstm_keys) == 4
        for key in lstm_keys:
            assert rows[key].deployed == export.PACKED_LSTM and rows[key].packed, key
        assert all(r.packed for r in report.kernels)
        assert report.op_counts["GQ_LSTM"] == 2
        assert not {"UNIDIRECTIONAL_SEQUENCE_LSTM", "WHILE", "FULLY_CONNECTED"} & set(report.op_counts)
        assert "packed GQ_LSTM" in report.table()
        assert report.packed_bytes == sum(r.nbytes for r in report.kernels)
        # No float (or int8) tensor in the file but the centroid tables has
        # the size of an LSTM matrix or of one of its gate blocks.
        model = flatbuf.read(Path(report.path).read_bytes())
        sizes = _constant_sizes(model)
        for key in lstm_keys:
            rows_, cols = books[key].indices.shape
            assert not {rows_ * cols, rows_ * cols // 4} & sizes, (name, key, sizes)


def _constant_sizes(model):
    """Element counts of the constant tensors that are not packed weights or
    centroid tables of a GQ op."""
    sub = model.subgraphs[0]
    tables = set()
    for op in sub.operators:
        name = flatbuf.op_name(model, op)
        tables |= {int(op.inputs[i]) for i in {"GQ_LSTM": (2, 4), "GQ_FULLY_CONNECTED": (2,)}.get(name, ())}
    return {int(np.prod(t.shape)) for i, t in enumerate(sub.tensors)
            if i not in tables and flatbuf.tensor_data(model, t) is not None
            and t.type != flatbuf.schema.TensorType.UINT8}


def test_ops_carry_the_version_1_contract(exported):
    qat, report = exported[("io", 1)]
    books = gq_tf.extract_codebooks(qat)
    model = flatbuf.read(Path(report.path).read_bytes())
    sub = model.subgraphs[0]
    ops = [op for op in sub.operators if flatbuf.op_name(model, op) == "GQ_LSTM"]
    by_units = {flatbuf.custom_options(op)["units"]: op for op in ops}
    for name, units, n_inputs, seq, state in (("lstm_io", 8, 8, 1, 1), ("lstm_nobias", 6, 5, 0, 0)):
        op = by_units[units]
        opts = flatbuf.custom_options(op)
        assert opts == {"version": 1, "kernel_bits": books[f"{name}/kernel"].bits,
                        "recurrent_bits": books[f"{name}/recurrent_kernel"].bits,
                        "in_features": books[f"{name}/kernel"].indices.shape[0], "units": units,
                        "return_sequences": seq, "return_state": state, "block_size": 64}
        assert model.operatorCodes[op.opcodeIndex].version == 1
        assert len(op.inputs) == n_inputs and len(op.outputs) == 1 + 2 * state
        for slot, weight, rows in ((1, "kernel", opts["in_features"]), (3, "recurrent_kernel", units)):
            book = books[f"{name}/{weight}"]
            packed = flatbuf.tensor_data(model, sub.tensors[op.inputs[slot]])
            idx = layout.unpack(packed, book.bits, rows, 4 * units)
            np.testing.assert_array_equal(idx, book.indices.T)  # W^T, gates i, f, c, o
            centroids = flatbuf.tensor_data(model, sub.tensors[op.inputs[slot + 1]])
            np.testing.assert_array_equal(centroids, book.centroids.astype(np.float32))
    bias = flatbuf.tensor_data(model, sub.tensors[by_units[8].inputs[5]])
    np.testing.assert_array_equal(bias, qat.get_layer("quant_lstm_io").layer.cell.bias.numpy())


# ------------------------------------------------------------ numerics


@pytest.mark.parametrize("kernel", list(TOL))
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("case", [("io", 1), ("io", 3), ("wide", 2)], ids=lambda c: f"{c[0]}_b{c[1]}")
def test_matches_keras(exported, case, runtime, kernel):
    qat, report = exported[case]
    f = feeds(qat, case[1], seed=case[1])
    want = keras_outputs(qat, f)
    got = run_tflite(report.path, f, runtime, kernel)
    assert [g.shape for g in got] == [w.shape for w in want]
    scale = max(1.0, max(float(np.abs(w).max()) for w in want))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=TOL[kernel] * scale)


def test_stateless_across_invokes(exported):
    """Unlike TFLite's builtin LSTM, a second invoke does not continue from
    the first one's state: the same input gives the same output."""
    qat, report = exported[("wide", 2)]
    interpreter = converters.make_interpreter(report.path)
    runner = interpreter.get_signature_runner()
    f = feeds(qat, 2, seed=5)
    first = runner(**f)
    runner(**feeds(qat, 2, seed=6))
    again = runner(**f)
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])


def test_tf_function_body_matches_keras():
    """tfops.gq_lstm also runs in TensorFlow (static and dynamic T)."""
    rng = np.random.default_rng(0)
    B, T, IN, U, kb, rb = 2, 4, 9, 5, 2, 3
    ki, ri = rng.integers(0, 2**kb, (4 * U, IN)), rng.integers(0, 2**rb, (4 * U, U))
    kc, rc = rng.normal(size=2**kb).astype(np.float32), rng.normal(size=2**rb).astype(np.float32)
    bias = rng.normal(size=4 * U).astype(np.float32)
    lstm = keras.layers.LSTM(U, return_sequences=True, return_state=True)
    x = rng.normal(size=(B, T, IN)).astype(np.float32)
    h0, c0 = (tf.constant(rng.normal(size=(B, U)).astype(np.float32)) for _ in range(2))
    lstm(x, initial_state=[h0, c0])
    lstm.set_weights([kc[ki].T, rc[ri].T, bias])
    want = [w.numpy() for w in lstm(x, initial_state=[h0, c0])]
    kw = dict(kernel_bits=kb, recurrent_bits=rb, in_features=IN, units=U, return_sequences=True,
              return_state=True)
    args = (layout.pack(ki, kb), kc, layout.pack(ri, rb), rc, bias, [h0, c0])
    dynamic = tf.function(lambda x: tfops.gq_lstm(x, *args, **kw),
                          input_signature=[tf.TensorSpec([B, None, IN])])
    for got in (tfops.gq_lstm(x, *args, **kw), dynamic(x)):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.numpy(), w, rtol=0, atol=1e-5)


# ----------------------------------------------------------- mixed model


def mixed_model():
    """Conv1D k=3 -> Conv1D k=1 -> LSTM -> Dense on frames, Conv2D on an image,
    a Dense head on both: every layer GQ, mixed bits."""
    keras.utils.set_random_seed(4)
    frames = keras.Input((8, 10), name="frames")
    img = keras.Input((6, 6, 2), name="img")
    x = keras.layers.Conv1D(16, 3, padding="same", activation="relu", name="conv3")(frames)
    x = keras.layers.Conv1D(12, 1, name="conv1")(x)
    x = keras.layers.LSTM(10, return_sequences=True, name="lstm")(x)
    x = keras.layers.Dense(6, activation="relu", name="dense")(x)
    i = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="conv2d")(img)
    x = keras.layers.Concatenate()([keras.layers.Flatten()(x), keras.layers.Flatten()(i)])
    out = keras.layers.Dense(5, name="head")(x)
    policy = {"conv3": 4, "conv1": 2, "lstm": {"kernel": 3, "recurrent_kernel": 5}, "dense": 1,
              "conv2d": 7, "head": 8}
    return random_biases(gq_tf.quantize_model(keras.Model([frames, img], out), policy), seed=3)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    qat = mixed_model()
    return qat, _export(qat, tmp_path_factory.mktemp("mixed") / "mixed.tflite")


def test_mixed_model_is_packed_everywhere(mixed):
    qat, report = mixed
    books = gq_tf.extract_codebooks(qat)
    assert [r.key for r in report.kernels] == list(books)  # no float kernel rows either
    assert all(r.packed for r in report.kernels)
    assert not any(r.deployed == export.FLOAT_DECODED for r in report.kernels)
    assert {r.key: r.deployed for r in report.kernels if r.deployed == export.PACKED_LSTM} == {
        "lstm/kernel": export.PACKED_LSTM, "lstm/recurrent_kernel": export.PACKED_LSTM}
    assert sorted({r.bits for r in report.kernels}) == [1, 2, 3, 4, 5, 7, 8]
    assert report.op_counts["GQ_LSTM"] == 1 and report.op_counts["GQ_FULLY_CONNECTED"] == 5
    assert not {"CONV_2D", "FULLY_CONNECTED", "UNIDIRECTIONAL_SEQUENCE_LSTM", "WHILE"} & set(report.op_counts)
    model = flatbuf.read(Path(report.path).read_bytes())
    sizes = _constant_sizes(model)
    for key, book in books.items():
        assert book.indices.size not in sizes, key
    # The other constants are biases (the LSTM's 40 the largest) and shape operands.
    assert max(sizes) <= 40, sizes
    packed = sum(int(np.prod(t.shape)) for t in model.subgraphs[0].tensors
                 if t.type == flatbuf.schema.TensorType.UINT8 and flatbuf.tensor_data(model, t) is not None)
    assert packed == sum(layout.packed_size(*op[1:]) for op in export._packed_ops(model))


@pytest.mark.parametrize("runtime,kernel", [("litert", "reference"), ("litert", "auto"),
                                            ("tflite", "reference"), ("tflite", "auto")])
def test_mixed_model_matches_keras(mixed, runtime, kernel):
    qat, report = mixed
    f = feeds(qat, 1, seed=9)
    (want,) = keras_outputs(qat, f)
    (got,) = run_tflite(report.path, f, runtime, kernel)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL[kernel] * max(1.0, float(np.abs(want).max())))


# ------------------------------------------------ what stays decoded


def _lstm_qat(policy=3, **lstm_kwargs):
    inp = keras.Input((5, 12), name="x", batch_size=1 if lstm_kwargs.get("stateful") else None)
    x = inp
    if lstm_kwargs.pop("masked", False):
        x = keras.layers.Masking(name="mask")(x)
    x = keras.layers.LSTM(8, name="lstm", **lstm_kwargs)(x)
    out = keras.layers.Dense(3, name="head")(x)
    return gq_tf.quantize_model(keras.Model(inp, out), policy)


@pytest.mark.parametrize("case,make,reason", [
    ("relu", lambda: _lstm_qat(activation="relu"), r"activation=relu: GQ_LSTM runs Keras' default LSTM only"),
    ("hard_sigmoid", lambda: _lstm_qat(recurrent_activation="hard_sigmoid"), r"recurrent_activation=hard_sigmoid"),
    ("backwards", lambda: _lstm_qat(go_backwards=True), r"go_backwards=True"),
    ("stateful", lambda: _lstm_qat(stateful=True), r"stateful=True"),
    ("masked", lambda: _lstm_qat(masked=True), r"LSTM called with a mask"),
    ("one_gq_kernel", lambda: _lstm_qat({"lstm": {"kernel": 4}, "head": 3}),
     r"GQ_LSTM needs both LSTM kernels GQ-quantized \(recurrent_kernel is float\)"),
    ("uniform_recurrent", lambda: _lstm_qat({"lstm": {"kernel": 4, "recurrent_kernel": gq_tf.Uniform(8)},
                                             "head": 3}),
     r"GQ_LSTM needs both LSTM kernels GQ-quantized \(recurrent_kernel is uniform\)"),
])
def test_other_lstms_are_not_planned_for_packing(case, make, reason):
    _, packs, notes = export._plan(make())
    assert "lstm" not in packs and "head" in packs
    assert any(key == "lstm/kernel" and re.search(reason, why) for key, why in notes), notes


def test_a_decoded_lstm_is_exported_with_a_warning_and_still_matches(tmp_path):
    qat = _lstm_qat(activation="relu")
    with pytest.warns(export.NotPackedWarning) as record:
        report = converters.export_tflite(qat, str(tmp_path / "m.tflite"))
    assert sorted(str(w.message).split(":")[0] for w in record) == ["lstm/kernel", "lstm/recurrent_kernel"]
    assert all("activation=relu" in str(w.message) for w in record)
    rows = {r.key: r for r in report.kernels}
    assert rows["lstm/kernel"].deployed == rows["lstm/recurrent_kernel"].deployed == export.FLOAT_DECODED
    assert rows["head/kernel"].deployed == export.PACKED
    assert "GQ_LSTM" not in report.op_counts
    x = np.random.default_rng(0).normal(size=(1, 5, 12)).astype(np.float32)
    interpreter = converters.make_interpreter(report.path, kernel="reference")
    interpreter.reset_all_variables()
    got = interpreter.get_signature_runner()(x=x)["output_0"]
    np.testing.assert_allclose(got, qat(x, training=False).numpy(), rtol=0, atol=1e-4)


# ------------------------------------------------------ malformed models


def build_lstm_model(batch=2, steps=3, in_features=70, units=5, kernel_bits=3, recurrent_bits=2,
                     bias=True, state=True, return_sequences=True, return_state=True, seed=0):
    """A converted model of one GQ_LSTM made with tfops directly (no Keras)."""
    rng = np.random.default_rng(seed)
    w = {
        "packed": layout.pack(rng.integers(0, 2**kernel_bits, (4 * units, in_features)), kernel_bits),
        "centroids": rng.normal(size=2**kernel_bits).astype(np.float32),
        "rec_packed": layout.pack(rng.integers(0, 2**recurrent_bits, (4 * units, units)), recurrent_bits),
        "rec_centroids": rng.normal(size=2**recurrent_bits).astype(np.float32),
        "bias": rng.normal(size=4 * units).astype(np.float32) if bias else None,
    }
    specs = [tf.TensorSpec([batch, steps, in_features], tf.float32, name="x")]
    if state:
        specs += [tf.TensorSpec([batch, units], tf.float32, name="h"),
                  tf.TensorSpec([batch, units], tf.float32, name="c")]

    class _Model(tf.Module):
        @tf.function(input_signature=specs)
        def f(self, x, *hc):
            out = tfops.gq_lstm(
                x, tf.constant(w["packed"]), tf.constant(w["centroids"]), tf.constant(w["rec_packed"]),
                tf.constant(w["rec_centroids"]), None if w["bias"] is None else tf.constant(w["bias"]),
                list(hc) if hc else None, kernel_bits=kernel_bits, recurrent_bits=recurrent_bits,
                in_features=in_features, units=units, return_sequences=return_sequences,
                return_state=return_state)
            return list(out) if return_state else out

    module = _Model()
    return tf.lite.TFLiteConverter.from_concrete_functions([module.f.get_concrete_function()], module).convert()


def lstm_ops(model):
    codes = {i for i, c in enumerate(model.operatorCodes) if c.customCode == b"GQ_LSTM"}
    return [op for op in model.subgraphs[0].operators if op.opcodeIndex in codes]


@pytest.fixture(scope="module")
def small_lstm():
    data = build_lstm_model()
    op = lstm_ops(flatbuf.read(data))[0]
    assert len(op.inputs) == 8 and len(op.outputs) == 3
    return data


K_PACKED = layout.packed_size(3, 70, 20)  # 2 blocks * 24 bytes * 20 rows = 960
R_PACKED = layout.packed_size(2, 5, 20)  # 1 block * 16 bytes * 20 rows = 320


def _shape(slot, shape):
    def edit(model, op):
        t = fz.tensor(model, int(op.inputs[slot]))
        t.shape, t.shapeSignature = np.array(shape, np.int32), None
    return edit


def _non_constant(slot):
    def edit(model, op):
        fz.tensor(model, int(op.inputs[slot])).buffer = 0
    return edit


def _reads_own_output(model, op):
    op.inputs = np.array(list(op.inputs[:7]) + [int(op.outputs[2])], np.int32)  # c0 := c_T


MALFORMED = {
    "options_version_2": (fz.edit_options(version=2), r"expected option version 1, received version=2"),
    "op_version_2": (fz.opcode_version(2), r"custom op GQ_LSTM has version 2"),
    "kernel_bits_9": (fz.edit_options(kernel_bits=9), r"expected option kernel_bits in 1\.\.8, received kernel_bits=9"),
    "recurrent_bits_0": (fz.edit_options(recurrent_bits=0),
                         r"expected option recurrent_bits in 1\.\.8, received recurrent_bits=0"),
    "kernel_bits_inconsistent": (fz.edit_options(kernel_bits=4), (
        rf"expected input kernel \(packed\) of {layout.packed_size(4, 70, 20)} bytes for bits=4 and a "
        rf"\[20, 70\] matrix \(planes64 layout\), received {K_PACKED} bytes")),
    "units_inconsistent": (fz.edit_options(units=6), r"expected input kernel \(packed\) of \d+ bytes .*\[24, 70\]"),
    "units_huge": (fz.edit_options(units=2**30), r"expected option units in 1\.\.536870911, received units=1073741824"),
    "in_features_mismatch": (fz.edit_options(in_features=64), (
        r"expected input x of shape \[batch, steps, 64\] \(in_features\), received \[2, 3, 70\]")),
    "return_sequences_2": (fz.edit_options(return_sequences=2), r"expected option return_sequences in 0\.\.1"),
    "return_state_0_with_3_outputs": (fz.edit_options(return_state=0),
                                      r"expected 1 output \(y\) \(return_state=0\), received 3"),
    "unknown_key": (fz.edit_options(activation=1), r"unknown option key 'activation' \(expected exactly the keys"),
    "missing_key": (fz.edit_options(units=fz.DROP), r"missing option 'units'"),
    "not_an_int": (fz.edit_options(units="5"), r"expected option 'units' to be an integer"),
    "block_size": (fz.edit_options(block_size=32), r"expected option block_size=64 .*received block_size=32"),
    "options_garbage": (lambda m, op: fz.set_option_bytes(op, b"\x07garbage\x01\x02"),
                        r"expected custom options to be a flexbuffer map, received 10 bytes"),
    "options_missing": (lambda m, op: fz.set_option_bytes(op, b""), r"expected custom options .*received none"),
    "four_inputs": (fz.edit_inputs(lambda i: i[:4]), r"expected 5 to 8 inputs .*received 4"),
    "nine_inputs": (fz.edit_inputs(lambda i: i + [i[0]]), r"expected 5 to 8 inputs .*received 9"),
    "x_optional": (fz.edit_inputs(lambda i: [-1] + i[1:]),
                   r"input x \(input 0\) is required, received the optional-tensor index -1"),
    "only_h0": (fz.edit_inputs(lambda i: i[:7] + [-1]), r"expected both h0 and c0 or neither, received only h0"),
    "one_output": (fz.edit_outputs(lambda o: o[:1]), r"expected 3 outputs \(y, h, c\) \(return_state=1\), received 1"),
    "x_rank_2": (_shape(0, [6, 70]), r"expected input x of rank 3, received shape \[6, 70\]"),
    "x_int8": (fz.set_type(0, 9), r"expected input x of type FLOAT32, received INT8"),
    "kernel_truncated": (fz.resize_const(1, K_PACKED - 1),
                         rf"expected input kernel \(packed\) of {K_PACKED} bytes .*received {K_PACKED - 1} bytes"),
    "recurrent_extended": (fz.resize_const(3, R_PACKED + 64), (
        rf"expected input recurrent kernel \(packed\) of {R_PACKED} bytes .*received {R_PACKED + 64} bytes")),
    "kernel_int8": (fz.set_type(1, 9), r"expected input kernel \(packed\) of type UINT8, received INT8"),
    "kernel_not_constant": (_non_constant(1), r"expected input kernel \(packed\) to be a constant of the model"),
    "centroids_length": (fz.resize_const(2, 16 * 4), (
        r"expected input kernel centroids of shape \[8\] \(2\*\*kernel_bits\), received \[16\]")),
    "recurrent_centroids_length": (fz.resize_const(4, 2 * 4), (
        r"expected input recurrent centroids of shape \[4\] \(2\*\*recurrent_bits\), received \[2\]")),
    "bias_length": (fz.resize_const(5, 19 * 4), r"expected input bias of shape \[20\] \(4 \* units\), received \[19\]"),
    "h0_shape": (_shape(6, [2, 6]), r"expected input h0 of shape \[2, 5\] \(batch, units\), received \[2, 6\]"),
    "c0_batch": (_shape(7, [3, 5]), r"expected input c0 of shape \[2, 5\] \(batch, units\), received \[3, 5\]"),
    "reads_own_output": (_reads_own_output, r"GQ_LSTM \(node 0\): input 7 \(tensor \d+\) is written by node 0"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_gq_lstm_is_rejected_with_a_clear_error(small_lstm, case):
    edit, pattern = MALFORMED[case]
    data = fz.edited(small_lstm, ops=lstm_ops, edit=edit)
    with pytest.raises(RuntimeError) as info:
        converters.make_interpreter(data)
    message = str(info.value)
    assert re.search(pattern, message), message
    if case != "op_version_2":
        assert "GQ_LSTM (node 0): " in message


@pytest.mark.parametrize("case", ["kernel_bits_9", "x_rank_2", "kernel_truncated", "only_h0", "reads_own_output"])
def test_malformed_gq_lstm_in_tf_lite(small_lstm, case):
    edit, pattern = MALFORMED[case]
    with pytest.raises(RuntimeError, match=pattern):
        converters.make_interpreter(fz.edited(small_lstm, ops=lstm_ops, edit=edit), runtime="tflite")


@pytest.mark.parametrize("form", ["bias_optional_index", "state_optional_index"])
def test_optional_tensor_index_marks_an_absent_input(small_lstm, form):
    """The 8-input form may mark an absent bias or state with -1."""
    def edit(model, op):
        i = [int(v) for v in op.inputs]
        op.inputs = np.array(i[:5] + [-1] + i[6:] if form == "bias_optional_index" else i[:6] + [-1, -1], np.int32)
    runner = converters.make_interpreter(fz.edited(small_lstm, ops=lstm_ops, edit=edit),
                                         kernel="reference").get_signature_runner()
    f = {"x": np.ones((2, 3, 70), np.float32), "h": np.zeros((2, 5), np.float32), "c": np.zeros((2, 5), np.float32)}
    out = runner(**f)
    assert out["output_0"].shape == (2, 3, 5) and np.all(np.isfinite(out["output_0"]))


def test_resized_batch_and_steps_rerun_prepare(small_lstm):
    """A model without state inputs runs at any batch and length after a resize,
    including empty ones."""
    data = build_lstm_model(state=False, bias=False, return_state=False)
    for shape in ([1, 4, 70], [3, 1, 70], [2, 0, 70], [0, 3, 70]):
        interpreter = converters.make_interpreter(data, kernel="reference")
        x_index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(x_index, shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(x_index, np.ones(shape, np.float32))
        interpreter.invoke()
        y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        assert y.shape == (shape[0], shape[1], 5)


# ---------------------------------------------------------------- fuzz


FUZZ_CASES = 150


def _lstm_fuzz_cases(bases, seed, count):
    """Cases made with tests/support/fuzz_delegate.py's mutations, applied to GQ_LSTM ops."""
    weights = np.array([w for _, w in fz.MUTATIONS], float)
    cases = []
    for number in range(count):
        rng = np.random.default_rng([seed, number])
        base = int(rng.integers(len(bases)))
        model = flatbuf.read(bases[base])
        ops = lstm_ops(model)
        steps = []
        for _ in range(int(rng.integers(1, 4))):
            fn = fz.MUTATIONS[int(rng.choice(len(fz.MUTATIONS), p=weights / weights.sum()))][0]
            steps.append(fn(rng, model, ops[int(rng.integers(len(ops)))]))
        cases.append((number, flatbuf.write(model), f"base {base}: " + "; ".join(steps)))
    return cases


def test_fuzzed_gq_lstm_models_never_crash():
    bases = [build_lstm_model(),
             build_lstm_model(batch=1, steps=4, in_features=9, units=3, kernel_bits=8, recurrent_bits=1,
                              bias=False, state=False, return_sequences=False, return_state=False, seed=1)]
    result = fz.run(_lstm_fuzz_cases(bases, seed=0, count=FUZZ_CASES), runtime="litert", jobs=2)
    crashes = "\n".join(f"case {n}: {d}\n{tail}" for n, d, tail in result.crashes)
    assert not result.crashes, f"{len(result.crashes)} crashing case(s):\n{crashes}"
    assert result.cases == FUZZ_CASES
    assert set(result.error_types) <= {"RuntimeError", "ValueError"}, result.error_types
    assert result.status["ok"] > 0 and result.status["rejected"] > FUZZ_CASES // 2
