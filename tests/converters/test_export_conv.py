"""Packed convolutions: Conv1D / Conv2D as builtin patches + GQ_FULLY_CONNECTED.

Tolerances. With ``kernel="reference"`` both sides compute float32 dot
products of at most 3*3*8 = 72 terms of the same decoded weights, in
different orders: differences are float32 rounding (~1e-7 measured); 1e-4 of
the output scale allows it, while one tap in the wrong place moves an output
by a weight times |x| (1e-2 and more). The default kernels (qd8, gq_fc.h)
round each patch row and the centroids to int8; gq_fc.h bounds that error
per output by sum_i (|x_i| sc/2 + |c_i| sx/2 + sx sc/4), which the test
computes from the patches (the activations are 1-Lipschitz, so the bound
holds after them), plus the float32 slack above.
"""

import warnings
from pathlib import Path

import numpy as np
import pytest

import converters
import gq_tf
from converters import export, flatbuf, layout
from gq_tf import keras
from tests.converters.test_export import random_biases

tf = gq_tf._keras.tf
RUNTIMES = ("litert", "tflite")
TOL = ("reference", "auto")

# name -> Conv1D arguments; every output is a model output.
CONV1D = {
    "k3_same": dict(filters=16, kernel_size=3, padding="same"),
    "k3_valid_relu": dict(filters=9, kernel_size=3, padding="valid", activation="relu"),
    "k3_causal_nobias": dict(filters=8, kernel_size=3, padding="causal", use_bias=False),
    "k3_same_s2": dict(filters=12, kernel_size=3, strides=2, padding="same", activation="tanh"),
    "k4_valid_s2": dict(filters=7, kernel_size=4, strides=2, padding="valid"),
    "k3_causal_d2": dict(filters=10, kernel_size=3, dilation_rate=2, padding="causal"),
    "k2_same_d2": dict(filters=5, kernel_size=2, dilation_rate=2, padding="same"),
    "k1_s3": dict(filters=6, kernel_size=1, strides=3),
}
CONV2D = {
    "3x3_same_s2": dict(filters=8, kernel_size=3, strides=2, padding="same", activation="relu"),
    "3x3_valid_s2": dict(filters=6, kernel_size=3, strides=2, padding="valid"),
    "3x3_same": dict(filters=5, kernel_size=3, padding="same", use_bias=False),
    "2x3_valid_d2": dict(filters=4, kernel_size=(2, 3), dilation_rate=2, padding="valid"),
    "1x1": dict(filters=3, kernel_size=1),
}
BITS = (1, 2, 3, 4, 5, 6, 7, 8)


def conv_model():
    keras.utils.set_random_seed(3)
    seq = keras.Input((11, 8), name="seq")  # odd length: uneven "same" padding at stride 2
    img = keras.Input((9, 10, 3), name="img")
    outs = [keras.layers.Conv1D(name=n, **kw)(seq) for n, kw in CONV1D.items()]
    outs += [keras.layers.Conv2D(name=n, **kw)(img) for n, kw in CONV2D.items()]
    model = keras.Model([seq, img], outs)
    names = list(CONV1D) + list(CONV2D)
    return random_biases(gq_tf.quantize_model(model, {n: BITS[i % len(BITS)] for i, n in enumerate(names)}))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    qat = conv_model()
    path = tmp_path_factory.mktemp("conv") / "conv.tflite"
    with warnings.catch_warnings():
        warnings.simplefilter("error", export.NotPackedWarning)
        report = converters.export_tflite(qat, str(path), batch_size=2)
    return qat, report


def _feeds(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return {"seq": rng.normal(size=(batch, 11, 8)).astype(np.float32),
            "img": rng.normal(size=(batch, 9, 10, 3)).astype(np.float32)}


def test_every_conv_is_packed_from_builtin_patches(exported):
    qat, report = exported
    books = gq_tf.extract_codebooks(qat)
    assert [r.key for r in report.kernels] == list(books)
    assert all(r.deployed == export.PACKED for r in report.kernels)
    assert report.op_counts["GQ_FULLY_CONNECTED"] == len(CONV1D) + len(CONV2D)
    # Patches come from builtin ops only: no convolution, no Flex op.
    allowed = {"GQ_FULLY_CONNECTED", "PAD", "STRIDED_SLICE", "CONCATENATION", "TANH"}  # tanh: k3_same_s2
    assert set(report.op_counts) <= allowed, report.op_counts
    model = flatbuf.read(Path(report.path).read_bytes())
    sub = model.subgraphs[0]
    sizes = {int(np.prod(t.shape)) for t in sub.tensors
             if flatbuf.tensor_data(model, t) is not None and t.type != flatbuf.schema.TensorType.UINT8}
    seen = {}
    for op in sub.operators:
        if flatbuf.op_name(model, op) == "GQ_FULLY_CONNECTED":
            o = flatbuf.custom_options(op)
            packed = flatbuf.tensor_data(model, sub.tensors[op.inputs[1]])
            seen[(o["bits"], o["in_features"], o["out_features"])] = layout.unpack(
                packed, o["bits"], o["in_features"], o["out_features"])
    for key, book in books.items():
        out = book.indices.shape[-1]
        kernel = book.indices.reshape(-1, out)  # [k * cin] (or [kh * kw * cin]) x out
        # The packed matrix is the kernel in tap-major, channel-minor order.
        np.testing.assert_array_equal(seen[(book.bits, kernel.shape[0], out)], kernel.T, err_msg=key)
        if book.indices.size > 16:  # tiny kernels may share a size with a bias
            assert book.indices.size not in sizes, key


def _qd8_bound(x, layer, book):
    """gq_fc.h's bound on |qd8 - exact| for every output of a packed convolution."""
    conv = (tuple(layer.kernel_size), tuple(layer.strides), tuple(layer.dilation_rate), layer.padding)
    patches = export.conv_patches(tf.constant(x), *conv).numpy().astype(np.float64)
    rows = patches.reshape(-1, patches.shape[-1])
    w = np.abs(book.decode().astype(np.float64).reshape(rows.shape[1], -1))  # [k * cin, out]
    sx = np.abs(rows).max(axis=1, keepdims=True) / 127
    sc = np.abs(book.centroids.astype(np.float64)).max() / 127
    bound = np.abs(rows).sum(axis=1, keepdims=True) * sc / 2 + sx / 2 * w.sum(axis=0) + sx * sc / 4 * rows.shape[1]
    return bound.reshape(*patches.shape[:-1], w.shape[1])


@pytest.mark.parametrize("kernel", TOL)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_matches_keras(exported, runtime, kernel):
    qat, report = exported
    books = gq_tf.extract_codebooks(qat)
    f = _feeds(seed=4)
    want = [w.numpy() for w in qat([f["seq"], f["img"]], training=False)]
    out = converters.make_interpreter(report.path, runtime=runtime, kernel=kernel).get_signature_runner()(**f)
    got = [out[f"output_{i}"] for i in range(len(want))]
    for name, g, w in zip(list(CONV1D) + list(CONV2D), got, want):
        assert g.shape == w.shape, name
        atol = 1e-4 * max(1.0, float(np.abs(w).max()))
        if kernel == "reference":
            np.testing.assert_allclose(g, w, rtol=0, atol=atol, err_msg=name)
        else:
            layer = qat.get_layer(f"quant_{name}").layer
            bound = _qd8_bound(f["seq" if name in CONV1D else "img"], layer, books[f"{name}/kernel"])
            err = np.abs(g.astype(np.float64) - w)
            assert np.all(err <= bound + atol), (name, float(np.max(err - bound)))
            assert np.max(err) > 0  # the int8 path really ran


# (padding, strides, dilation, length) with k = 3; "valid" needs length >= span.
PATCH_CASES_1D = [(p, s, d, n) for p in ("valid", "same", "causal") for s, d in ((1, 1), (2, 1), (3, 1), (1, 2), (1, 3))
                  for n in (1, 2, 5, 6, 7) if p != "valid" or n >= 2 * d + 1]


@pytest.mark.parametrize("padding,strides,dilation,length", PATCH_CASES_1D)
def test_patches_match_tf_convolution_1d(padding, strides, dilation, length):
    """export.conv_patches times the reshaped kernel is the convolution, for
    static and unknown lengths (the deployment model is built symbolically)."""
    rng = np.random.default_rng(length)
    k, cin, cout = 3, 2, 4
    x = rng.normal(size=(2, length, cin)).astype(np.float32)
    w = rng.normal(size=(k, cin, cout)).astype(np.float32)
    conv = keras.layers.Conv1D(cout, k, strides=strides, dilation_rate=dilation, padding=padding, use_bias=False)
    conv.build((None, None, cin))
    conv.set_weights([w])
    want = conv(x).numpy()

    def lowered(t):
        return tf.tensordot(export.conv_patches(t, (k,), (strides,), (dilation,), padding), w.reshape(-1, cout), 1)

    dynamic = tf.function(lowered, input_signature=[tf.TensorSpec([None, None, cin])])
    for got in (lowered(tf.constant(x)), dynamic(x)):
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("strides,dilation", [((1, 1), (1, 1)), ((2, 2), (1, 1)), ((2, 1), (1, 1)),
                                              ((1, 1), (2, 1))])
def test_patches_match_tf_convolution_2d(padding, strides, dilation):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 7, 6, 3)).astype(np.float32)
    w = rng.normal(size=(3, 2, 3, 5)).astype(np.float32)
    conv = keras.layers.Conv2D(5, (3, 2), strides=strides, dilation_rate=dilation, padding=padding, use_bias=False)
    conv.build((None, 7, 6, 3))
    conv.set_weights([w])
    got = tf.tensordot(export.conv_patches(tf.constant(x), (3, 2), strides, dilation, padding), w.reshape(-1, 5), 1)
    np.testing.assert_allclose(got.numpy(), conv(x).numpy(), rtol=0, atol=1e-5)


def test_depthwise_and_grouped_convs_stay_decoded(tmp_path):
    inp = keras.Input((6, 8))
    x = keras.layers.DepthwiseConv1D(3, padding="same", name="dw")(inp)
    x = keras.layers.Conv1D(8, 3, groups=2, name="grouped")(x)
    x = keras.layers.Conv1D(4, 3, name="plain")(x)
    qat = gq_tf.quantize_model(keras.Model(inp, x), 4)
    with pytest.warns(export.NotPackedWarning) as record:
        report = converters.export_tflite(qat, str(tmp_path / "m.tflite"))
    text = " ".join(str(w.message) for w in record)
    assert "dw/depthwise_kernel" in text and "grouped/kernel" in text and "groups=2" in text
    rows = {r.key: r.deployed for r in report.kernels}
    assert rows == {"dw/depthwise_kernel": export.FLOAT_DECODED, "grouped/kernel": export.FLOAT_DECODED,
                    "plain/kernel": export.PACKED}
    x = np.random.default_rng(0).normal(size=(1, 6, 8)).astype(np.float32)
    got = converters.make_interpreter(report.path, kernel="reference").get_signature_runner()(**{
        qat.inputs[0].name.split(":")[0]: x})["output_0"]
    np.testing.assert_allclose(got, qat(x, training=False).numpy(), rtol=0, atol=1e-4)
