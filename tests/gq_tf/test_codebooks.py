"""Codebook export and stripping, on every supported layer type and bit depth."""

import numpy as np
import pytest

import gq_tf
from gq_tf._keras import tf
from gq_tf.codebooks import quantized_weights
from tests.conftest import image_inputs, image_model, sequence_inputs, sequence_model

# Strip vs QAT: the same float32 weights through the same layers; the only
# differences come from TF picking other fused kernels for a variable than for
# a tensor weight (LSTM, einsum), i.e. float32 rounding over a few layers.
ATOL = 1e-5


def _mixed_policy(bits):
    return {
        "lstm": {"kernel": bits, "recurrent_kernel": gq_tf.Uniform(bits)},
        "mha": {"query": bits, "key": gq_tf.Uniform(bits), "value": bits, "output": bits},
        ".*": bits,
    }


@pytest.mark.parametrize("bits", range(1, 9))
def test_strip_matches_qat_inference_every_layer_type(bits):
    for make, inputs in ((sequence_model, sequence_inputs()), (image_model, image_inputs())):
        original = make(seed=bits)
        qat = gq_tf.quantize_model(original, _mixed_policy(bits))
        expected = qat(inputs, training=False).numpy()
        stripped = gq_tf.strip_quantization(qat)
        assert [(type(x).__name__, x.name) for x in stripped.layers] == [
            (type(x).__name__, x.name) for x in original.layers
        ]
        np.testing.assert_allclose(stripped(inputs).numpy(), expected, atol=ATOL, rtol=ATOL)
        books = gq_tf.extract_codebooks(qat)
        for key, book in books.items():
            assert len(np.unique(book.decode())) <= 2**bits, key
            assert book.bits == bits and book.centroids.shape == (2**bits,)
            assert book.centroids.dtype == np.float32 and book.indices.dtype == np.uint8
            assert np.all(np.diff(book.centroids) >= 0), "centroids must be ascending"


def test_codebook_keys_use_original_layer_names():
    qat = gq_tf.quantize_model(sequence_model(), 4)
    assert sorted(gq_tf.extract_codebooks(qat)) == sorted([
        "embed/embeddings", "conv1d/kernel", "dwconv1d/depthwise_kernel", "lstm/kernel",
        "lstm/recurrent_kernel", "mha/query", "mha/key", "mha/value", "mha/output", "dense/kernel",
    ])


def test_decode_is_bit_exact_with_keras_inference_weights():
    qat = gq_tf.quantize_model(sequence_model(), {"lstm": 8, "mha": gq_tf.Uniform(4), ".*": 3})
    books = gq_tf.extract_codebooks(qat)
    for qw in quantized_weights(qat):
        inference = qw.quantizer(tf.convert_to_tensor(qw.variable), False, qw.qvars).numpy()
        decoded = books[qw.key].decode()
        assert decoded.shape == tuple(qw.variable.shape)
        assert np.array_equal(decoded, inference), qw.key  # exact: same float32 table values


def test_stripped_weights_are_exactly_the_decoded_ones():
    qat = gq_tf.quantize_model(sequence_model(), 2)
    stripped = gq_tf.strip_quantization(qat)
    books = gq_tf.extract_codebooks(qat)
    assert np.array_equal(stripped.get_layer("lstm").cell.recurrent_kernel.numpy(),
                          books["lstm/recurrent_kernel"].decode())
    assert np.array_equal(stripped.get_layer("mha")._query_dense.kernel.numpy(), books["mha/query"].decode())
    # Non-quantized weights (biases, norms) carry over unchanged.
    assert np.array_equal(stripped.get_layer("norm").gamma.numpy(),
                          qat.get_layer("norm").gamma.numpy())


def test_gq_export_matches_numpy_reference():
    from gq_tf import reference

    qat = gq_tf.quantize_model(sequence_model(), {"dense": gq_tf.GQ(3, mu=32.0), "conv1d": gq_tf.GQ(6, mu=0.0)})
    books = gq_tf.extract_codebooks(qat)
    for qw in quantized_weights(qat):
        theta = qw.qvars["theta"].numpy()
        s = float(qw.qvars["scale"].numpy())
        centroids, indices = reference.codebook(qw.variable.numpy(), theta, s, qw.quantizer.mu)
        np.testing.assert_array_equal(books[qw.key].indices, indices)
        # float32 vs float64 expander: a few ulp of the largest centroid.
        np.testing.assert_allclose(books[qw.key].centroids, centroids, rtol=1e-5, atol=1e-6 * s)


def test_uniform_export_matches_numpy_reference():
    from gq_tf import reference

    qat = gq_tf.quantize_model(sequence_model(), {"dense": gq_tf.Uniform(1), "conv1d": gq_tf.Uniform(8)})
    books = gq_tf.extract_codebooks(qat)
    for qw in quantized_weights(qat):
        centroids, indices = reference.uniform_codebook(qw.variable.numpy(), qw.quantizer.bits)
        np.testing.assert_array_equal(books[qw.key].indices, indices)
        np.testing.assert_allclose(books[qw.key].centroids, centroids, rtol=1e-6)  # float32 rounding
        assert books[qw.key].method == "uniform"


def test_packed_size_is_dense():
    qat = gq_tf.quantize_model(sequence_model(), {"dense": 5})
    book = gq_tf.extract_codebooks(qat)["dense/kernel"]
    n = book.indices.size
    assert book.packed_nbytes == (n * 5 + 7) // 8 + 4 * 32


def test_extract_from_a_float_model_is_an_error():
    with pytest.raises(ValueError, match="made by gq_tf.quantize_model"):
        gq_tf.extract_codebooks(sequence_model())
