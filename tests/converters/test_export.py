"""converters.export_tflite: packed GQ custom ops, builtin fallbacks, int8, errors."""

import os
import warnings

import numpy as np
import pytest

import converters
import gq_tf
from converters import export, flatbuf, layout
from gq_tf import keras

tf = gq_tf._keras.tf
RUNTIMES = ("litert", "tflite")


def run_tflite(path, xs, runtime="litert", kernel="reference"):
    """The model's first output. The reference kernel (exact float32) by
    default, so outputs compare with Keras at float rounding; the fast int8
    kernels are held to their own bound in test_c_kernel/test_delegate."""
    interpreter = converters.make_interpreter(path, runtime=runtime, kernel=kernel)
    xs = xs if isinstance(xs, (list, tuple)) else [xs]
    for detail, x in zip(interpreter.get_input_details(), xs):
        interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def mixed_model():
    """Dense on rank-2 and rank-3 inputs, with and without bias, relu and linear,
    Conv1D k=1 (also strided), and every bit depth the issue names."""
    seq = keras.Input((6, 40), name="seq")
    vec = keras.Input((24,), name="vec")
    x = keras.layers.Dense(70, activation="relu", name="d3_relu_b1")(seq)
    x = keras.layers.Conv1D(33, 1, name="conv_k1_b3")(x)
    x = keras.layers.Conv1D(64, 1, strides=2, activation="relu", use_bias=False, name="conv_k1_s2_b2")(x)
    x = keras.layers.Dense(20, use_bias=False, name="d3_nobias_b5")(x)
    x = keras.layers.Flatten()(x)
    v = keras.layers.Dense(65, activation="relu", use_bias=False, name="d2_relu_nobias_b4")(vec)
    x = keras.layers.Concatenate()([x, v])
    x = keras.layers.Dense(32, activation="tanh", name="d2_tanh_b2")(x)
    out = keras.layers.Dense(10, name="d2_linear_b8")(x)
    model = keras.Model([seq, vec], out)
    policy = {".*_b1": 1, ".*_b2": 2, ".*_b3": 3, ".*_b4": 4, ".*_b5": 5, ".*_b8": 8}
    return random_biases(gq_tf.quantize_model(model, policy))


def random_biases(qat, seed=1):
    """Non-zero biases, so that a dropped bias would show."""
    rng = np.random.default_rng(seed)
    for layer in qat.layers:
        for w in layer.weights:
            if w.name.endswith("bias:0"):
                w.assign(rng.normal(0, 0.3, w.shape))
    return qat


def inputs(rng, batch=1):
    return [rng.normal(size=(batch, 6, 40)).astype(np.float32),
            rng.normal(size=(batch, 24)).astype(np.float32)]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    qat = mixed_model()
    path = str(tmp_path_factory.mktemp("mixed") / "mixed.tflite")
    with warnings.catch_warnings():
        warnings.simplefilter("error", export.NotPackedWarning)  # everything here must be packed
        report = converters.export_tflite(qat, path)
    return qat, report


def test_report_lists_every_kernel_as_packed(mixed):
    qat, report = mixed
    books = gq_tf.extract_codebooks(qat)
    assert [r.key for r in report.kernels] == list(books)
    assert all(r.deployed == export.PACKED for r in report.kernels)
    assert sorted({r.bits for r in report.kernels}) == [1, 2, 3, 4, 5, 8]
    assert report.op_counts["GQ_FULLY_CONNECTED"] == len(books)
    assert "FULLY_CONNECTED" not in report.op_counts and "CONV_2D" not in report.op_counts
    assert report.size_bytes == os.path.getsize(report.path)
    assert "packed GQ_FULLY_CONNECTED" in report.table()


def test_custom_ops_carry_the_version_1_contract(mixed):
    qat, report = mixed
    books = gq_tf.extract_codebooks(qat)
    model = flatbuf.read(open(report.path, "rb").read())
    sub = model.subgraphs[0]
    seen = {}
    for op in sub.operators:
        if flatbuf.op_name(model, op) != "GQ_FULLY_CONNECTED":
            continue
        opts = flatbuf.custom_options(op)
        assert set(opts) == {"version", "bits", "in_features", "out_features", "block_size", "fused_activation"}
        assert opts["version"] == 1 and opts["block_size"] == layout.BLOCK
        assert model.operatorCodes[op.opcodeIndex].version == 1
        packed = flatbuf.tensor_data(model, sub.tensors[op.inputs[1]])
        centroids = flatbuf.tensor_data(model, sub.tensors[op.inputs[2]])
        idx = layout.unpack(packed, opts["bits"], opts["in_features"], opts["out_features"])
        seen[(opts["bits"], opts["in_features"], opts["out_features"])] = (idx, centroids, opts)
    # Decoding the file's bytes gives back exactly the learned codebooks.
    for key, book in books.items():
        kernel = book.indices.reshape(-1, book.indices.shape[-1])
        idx, centroids, opts = seen[(book.bits, kernel.shape[0], kernel.shape[1])]
        np.testing.assert_array_equal(idx, kernel.T, err_msg=key)
        np.testing.assert_array_equal(centroids, book.centroids.astype(np.float32), err_msg=key)
    acts = {o["fused_activation"] for _, _, o in seen.values()}
    assert acts == {"RELU", "NONE"}


def test_packed_weights_are_64_byte_aligned_in_the_file(mixed):
    """The SIMD kernels read packed weights in place with 64-byte loads: every
    buffer of the file starts on a cache line (the runtimes map files
    page-aligned, so the offset is the alignment in memory)."""
    _, report = mixed
    data = open(report.path, "rb").read()
    model = flatbuf.read(data)
    offsets = flatbuf.buffer_offsets(data)
    sub = model.subgraphs[0]
    packed = [sub.tensors[op.inputs[1]].buffer for op in sub.operators
              if flatbuf.op_name(model, op) == "GQ_FULLY_CONNECTED"]
    assert packed and all(offsets[b] % 64 == 0 for b in packed)
    assert all(off % flatbuf.BUFFER_ALIGNMENT == 0 for off in offsets.values())


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_tflite_matches_qat_inference(mixed, runtime):
    qat, report = mixed
    rng = np.random.default_rng(7)
    for _ in range(3):
        xs = inputs(rng)
        want = qat(xs, training=False).numpy()
        got = run_tflite(report.path, xs, runtime)
        # Both sides compute float32 dot products of at most 2,000 terms of the
        # same decoded weights, in different orders (TF's blocked GEMM, our row
        # loop): each can differ by ~n * 2^-24 of sum|x*w|, a few 1e-5 relative,
        # compounded over 7 layers. 2e-4 of the output scale allows that; one
        # wrong index moves an output by a centroid gap times |x| (>= 1e-2 here).
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * scale)
        # The default kernel (int8 activations and centroid codes) stays
        # within the dynamic-range int8 error: about 1/254 of each term's
        # scale per layer, here ~3e-3 after 7 layers; 2e-2 leaves margin
        # while a swapped or misread row would be O(1).
        fast = run_tflite(report.path, xs, runtime, kernel="auto")
        np.testing.assert_allclose(fast, want, rtol=0, atol=2e-2 * scale)


def test_batch_size_is_fixed_in_the_file(tmp_path):
    qat = mixed_model()
    report = converters.export_tflite(qat, str(tmp_path / "b3.tflite"), batch_size=3)
    xs = inputs(np.random.default_rng(0), batch=3)
    got = run_tflite(report.path, xs)
    want = qat(xs, training=False).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * max(1.0, np.abs(want).max()))


def big_model(bits=1, width=256):
    inp = keras.Input((width,))
    x = keras.layers.Dense(width, activation="relu", name="a")(inp)
    x = keras.layers.Dense(width, name="b")(x)
    out = keras.layers.Dense(8, name="head")(x)  # stays float
    return gq_tf.quantize_model(keras.Model(inp, out), {"a|b": bits})


def test_exported_file_gets_the_mode_open_would_give(tmp_path):
    """The exporter writes through a temporary file (mkstemp: owner only);
    the .tflite must still be readable as any file the user makes, e.g. by
    adb push or a web server, not 0600."""
    from gq_tf.fileio import new_file_mode

    report = converters.export_tflite(big_model(4, 16), str(tmp_path / "m.tflite"))
    assert os.stat(report.path).st_mode & 0o777 == new_file_mode()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_file_holds_no_copy_of_packed_kernels(tmp_path, bits):
    width = 256
    qat = big_model(bits, width)
    report = converters.export_tflite(qat, str(tmp_path / "m.tflite"))
    packed = sum(layout.packed_size(bits, width, width) + 4 * 2**bits for _ in range(2))
    assert report.packed_bytes == packed
    # Everything not GQ-packed: the float head (kernel + bias) and two biases.
    others = 4 * (width * 8 + 8) + 2 * 4 * width
    assert report.size_bytes <= packed + others + 16 * 1024
    # And explicitly: no float or int8 tensor has a packed kernel's element count.
    model = flatbuf.read(open(report.path, "rb").read())
    sizes = [int(np.prod(t.shape)) for t in model.subgraphs[0].tensors
             if flatbuf.tensor_data(model, t) is not None and t.type != flatbuf.schema.TensorType.UINT8]
    assert width * width not in sizes


def test_uniform_8bit_baseline_exports_to_dynamic_range_int8(tmp_path):
    inp = keras.Input((6, 48))
    x = keras.layers.Dense(64, activation="relu", name="a")(inp)
    x = keras.layers.LSTM(32, name="lstm")(x)
    out = keras.layers.Dense(10, name="head")(x)
    qat = gq_tf.quantize_model(keras.Model(inp, out), {".*": gq_tf.Uniform(8)})
    report = converters.export_tflite(qat, str(tmp_path / "u8.tflite"))
    assert {r.deployed for r in report.kernels} == {export.INT8}
    assert "GQ_FULLY_CONNECTED" not in report.op_counts
    assert report.op_counts.get("UNIDIRECTIONAL_SEQUENCE_LSTM") == 1
    model = flatbuf.read(open(report.path, "rb").read())
    books = gq_tf.extract_codebooks(qat)
    int8 = [t for t in model.subgraphs[0].tensors if t.type == flatbuf.schema.TensorType.INT8]
    assert len(int8) == 2 + 8  # two Dense kernels, 8 LSTM gate matrices
    # The int8 values are exactly the QAT grid: q * scale reproduces the weights.
    a = books["a/kernel"].decode()
    t = next(t for t in int8 if tuple(t.shape) == (64, 48))
    q = flatbuf.tensor_data(model, t).astype(np.float64)
    np.testing.assert_allclose(q.T * t.quantization.scale[0], a, rtol=1e-6, atol=0)
    x = np.random.default_rng(0).normal(size=(1, 6, 48)).astype(np.float32)
    want = qat(x, training=False).numpy()
    got = run_tflite(report.path, x)
    # Dynamic-range kernels quantize activations to int8 per row (steps of
    # ~range/255): a ~1% relative error per layer is expected, not more.
    np.testing.assert_allclose(got, want, rtol=0, atol=0.03 * np.abs(want).max())


def test_gq_layers_without_packed_op_are_decoded_with_a_warning(tmp_path):
    # Conv1D k>1 and default LSTMs are packed (tests/converters/test_export_conv.py,
    # tests/converters/test_export_lstm.py); depthwise convolutions and LSTMs configured
    # otherwise are not.
    inp = keras.Input((5, 12))
    x = keras.layers.DepthwiseConv1D(3, padding="same", name="dwconv3")(inp)
    x = keras.layers.LSTM(8, return_sequences=True, go_backwards=True, name="lstm")(x)
    out = keras.layers.Dense(4, name="head")(x)
    qat = gq_tf.quantize_model(keras.Model(inp, out), 3)
    with pytest.warns(export.NotPackedWarning) as record:
        report = converters.export_tflite(qat, str(tmp_path / "m.tflite"))
    text = "\n".join(str(w.message) for w in record)
    assert "lstm/kernel: exported with decoded float weights" in text and "go_backwards=True" in text
    assert "dwconv3/depthwise_kernel: exported with decoded float weights" in text
    rows = {r.key: r for r in report.kernels}
    assert rows["dwconv3/depthwise_kernel"].deployed == export.FLOAT_DECODED
    assert rows["lstm/recurrent_kernel"].deployed == export.FLOAT_DECODED
    assert rows["head/kernel"].deployed == export.PACKED
    assert rows["lstm/kernel"].nbytes == 4 * 12 * 32
    x = np.random.default_rng(0).normal(size=(1, 5, 12)).astype(np.float32)
    want = qat(x, training=False).numpy()
    # The decoded builtins compute the same float32 math in another order
    # (the packed head with the exact reference kernel).
    interpreter = converters.make_interpreter(report.path, kernel="reference")
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(1, np.abs(want).max()))


def test_dynamic_int8_quantizes_only_the_float_layers(tmp_path):
    inp = keras.Input((64,))
    x = keras.layers.Dense(64, activation="relu", name="float_a")(inp)
    x = keras.layers.Dense(64, name="gq")(x)
    out = keras.layers.Dense(32, name="float_b")(x)
    qat = gq_tf.quantize_model(keras.Model(inp, out), {"gq": 4})
    plain = converters.export_tflite(qat, str(tmp_path / "f.tflite"))
    mixed = converters.export_tflite(qat, str(tmp_path / "i.tflite"), weights="dynamic_int8")
    rows = {r.key: r for r in mixed.kernels}
    assert rows["gq/kernel"].deployed == export.PACKED
    assert rows["float_a/kernel"].deployed == export.INT8
    assert rows["float_b/kernel"].deployed == export.INT8
    # 4 -> 1 byte per weight, less the per-channel scales and alignment.
    assert mixed.size_bytes < plain.size_bytes - 2.5 * (64 * 64 + 64 * 32)
    x = np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32)
    want = qat(x, training=False).numpy()
    np.testing.assert_allclose(run_tflite(mixed.path, x), want, rtol=0, atol=0.03 * np.abs(want).max())


def test_baselines_float_and_int8(tmp_path):
    qat = big_model(4)
    f = converters.export_baseline(qat, str(tmp_path / "f.tflite"), kind="float")
    i = converters.export_baseline(qat, str(tmp_path / "i.tflite"), kind="int8")
    g = converters.export_tflite(qat, str(tmp_path / "g.tflite"))
    assert g.size_bytes < i.size_bytes < f.size_bytes
    assert "GQ_FULLY_CONNECTED" not in f.op_counts


# ---- bad input: clear errors, nothing left behind ----

def _files(d):
    return sorted(os.listdir(d))


def test_rejects_a_float_model(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="QAT model made by gq_tf.quantize_model"):
        converters.export_tflite(model, str(tmp_path / "m.tflite"))
    assert _files(tmp_path) == []


def test_rejects_non_models_and_unbuilt_models(tmp_path):
    with pytest.raises(TypeError, match="tf_keras Sequential or Functional"):
        converters.export_tflite("model.h5", str(tmp_path / "m.tflite"))
    with pytest.raises(ValueError, match="not built"):
        converters.export_tflite(keras.Sequential([keras.layers.Dense(2)]), str(tmp_path / "m.tflite"))
    assert _files(tmp_path) == []


def test_rejects_unknown_weights_mode(tmp_path):
    with pytest.raises(ValueError, match=r"Expected weights in \('float', 'dynamic_int8'\). Received: weights='int4'"):
        converters.export_tflite(big_model(), str(tmp_path / "m.tflite"), weights="int4")
    assert _files(tmp_path) == []


def test_rejects_unwritable_destinations(tmp_path):
    qat = big_model()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        converters.export_tflite(qat, str(tmp_path / "missing" / "m.tflite"))
    with pytest.raises(ValueError, match="directory"):
        converters.export_tflite(qat, str(tmp_path))
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(PermissionError, match="not writable"):
            converters.export_tflite(qat, str(ro / "m.tflite"))
    assert _files(tmp_path) == (["ro"] if os.geteuid() != 0 else [])


def test_a_layer_the_converter_cannot_lower_leaves_no_file(tmp_path):
    inp = keras.Input((4, 4))
    x = keras.layers.Lambda(lambda t: tf.linalg.inv(t + 4.0 * tf.eye(4)), name="inverse")(inp)
    x = keras.layers.Flatten()(x)
    qat = gq_tf.quantize_model(keras.Model(inp, keras.layers.Dense(3, name="d")(x)), 4)
    target = tmp_path / "m.tflite"
    target.write_bytes(b"previous export")  # must survive a failed export
    with pytest.raises(ValueError, match="could not convert"):
        converters.export_tflite(qat, str(target))
    assert target.read_bytes() == b"previous export"
    assert _files(tmp_path) == ["m.tflite"]


def test_static_shapes_are_required(tmp_path):
    inp = keras.Input((None, 8))
    qat = gq_tf.quantize_model(keras.Model(inp, keras.layers.Dense(3, name="d")(inp)), 4)
    with pytest.raises(ValueError, match="input_signature"):
        converters.export_tflite(qat, str(tmp_path / "m.tflite"))
    report = converters.export_tflite(qat, str(tmp_path / "m.tflite"),
                                      input_signature=[tf.TensorSpec([1, 5, 8], tf.float32)])
    x = np.ones((1, 5, 8), np.float32)
    np.testing.assert_allclose(run_tflite(report.path, x), qat(x, training=False).numpy(), atol=1e-4)


def test_export_command_prints_the_report_and_baselines(tmp_path, capsys):
    from gq_speech import __main__ as cli  # the gq-tf command, whose export is converters.cli

    qat = big_model(2)
    gq_tf.save_qat(qat, str(tmp_path / "qat"))
    out = tmp_path / "m.tflite"
    assert cli.main(["export", str(tmp_path / "qat"), str(out)]) == 0
    text = capsys.readouterr().out
    assert "| a/kernel" in text and "packed GQ_FULLY_CONNECTED" in text
    assert "float32" in text and "int8 (dynamic range)" in text
    assert out.exists() and (tmp_path / "m.float.tflite").exists() and (tmp_path / "m.int8.tflite").exists()
    assert cli.main(["export", str(tmp_path / "nothing_here")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_attention_projections_are_packed(tmp_path, runtime):
    inp = keras.Input((6, 32))
    x = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8, value_dim=12, name="mha")(inp, inp)
    x = keras.layers.LayerNormalization(name="norm")(x + inp)
    qat = gq_tf.quantize_model(keras.Model(inp, x), {"mha": {"query": 2, "key": 3, "value": 4, "output": 5}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", export.NotPackedWarning)
        report = converters.export_tflite(qat, str(tmp_path / "mha.tflite"))
    assert {r.deployed for r in report.kernels} == {export.PACKED}
    assert report.op_counts["GQ_FULLY_CONNECTED"] == 4
    x = np.random.default_rng(3).normal(size=(1, 6, 32)).astype(np.float32)
    want = qat(x, training=False).numpy()
    # float32 reordering only (see test_tflite_matches_qat_inference).
    np.testing.assert_allclose(run_tflite(report.path, x, runtime), want, rtol=0,
                               atol=2e-4 * max(1, np.abs(want).max()))


def test_uniform_depthwise_convolution_gets_a_scale_per_channel(tmp_path):
    # TFLite's hybrid depthwise kernel reads one filter scale per channel:
    # with a single per-tensor scale every channel after the first was wrong.
    inp = keras.Input((9, 24))
    x = keras.layers.DepthwiseConv1D(5, padding="same", name="dw")(inp)
    out = keras.layers.Dense(8, name="head")(x)
    qat = gq_tf.quantize_model(keras.Model(inp, out), {".*": gq_tf.Uniform(8)})
    report = converters.export_tflite(qat, str(tmp_path / "dw.tflite"))
    assert {r.key: r.deployed for r in report.kernels}["dw/depthwise_kernel"] == export.INT8
    model = flatbuf.read(open(report.path, "rb").read())
    dw = next(t for t in model.subgraphs[0].tensors
              if t.type == flatbuf.schema.TensorType.INT8 and tuple(t.shape)[-1] == 24)
    assert len(dw.quantization.scale) == 24 and dw.quantization.quantizedDimension == 3
    assert len(set(dw.quantization.scale)) == 1  # still the one QAT grid
    x = np.random.default_rng(0).normal(size=(1, 9, 24)).astype(np.float32)
    want = qat(x, training=False).numpy()
    np.testing.assert_allclose(run_tflite(report.path, x), want, rtol=0, atol=0.03 * np.abs(want).max())


def test_uniform_attention_is_int8_even_with_the_folded_query_scale(tmp_path):
    inp = keras.Input((6, 32))
    x = keras.layers.MultiHeadAttention(num_heads=2, key_dim=16, name="mha")(inp, inp)
    qat = gq_tf.quantize_model(keras.Model(inp, x), {".*": gq_tf.Uniform(8)})
    report = converters.export_tflite(qat, str(tmp_path / "u.tflite"))
    # The converter multiplies the query kernel by 1/sqrt(16): still a grid.
    assert {r.key: r.deployed for r in report.kernels} == {
        f"mha/{w}": export.INT8 for w in ("query", "key", "value", "output")}
    x = np.random.default_rng(0).normal(size=(1, 6, 32)).astype(np.float32)
    want = qat(x, training=False).numpy()
    # Dynamic-range activation quantization only (see the uniform LSTM test).
    np.testing.assert_allclose(run_tflite(report.path, x), want, rtol=0, atol=0.03 * np.abs(want).max())
