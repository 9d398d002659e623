"""TensorFlow functions the TFLite converter fuses into ``GQ_*`` custom ops.

Each function is a ``tf.function`` marked ``experimental_implements`` with
``tfl_fusable_op``: the converter replaces every call by one CUSTOM op whose
custom options are a flexbuffer map of the other attributes, and keeps the
constant inputs (the packed uint8 indices) byte for byte. The body is a
plain TensorFlow implementation of the same op (it decodes the layout), so
the deployment graph also runs in TensorFlow and can be checked there.
"""

import functools

from gq_tf._keras import tf
from converters import layout

__all__ = ["GQ_FC_NAME", "GQ_FC_VERSION", "ACTIVATIONS", "gq_fully_connected", "decode_indices"]

GQ_FC_NAME = "GQ_FULLY_CONNECTED"
GQ_FC_VERSION = 1
# Fused activations of version 1 (values as TFLite's TfLiteFusedActivation).
ACTIVATIONS = ("NONE", "RELU", "RELU_N1_TO_1", "RELU6")


def decode_indices(packed, bits, in_features, out_features):
    """TF decoder of the planes64 layout: int32 [out, in] indices."""
    nb = -(-in_features // layout.BLOCK)
    blocks = tf.reshape(tf.cast(packed, tf.int32), [out_features, nb, 8 * bits])
    idx = tf.zeros([out_features, nb, layout.BLOCK], tf.int32)
    start = shift = 0
    for w in layout.plane_widths(bits):
        plane = blocks[:, :, start : start + 8 * w]
        fields = tf.stack([tf.bitwise.right_shift(plane, w * s) for s in range(8 // w)], axis=2)
        fields = tf.bitwise.bitwise_and(fields, (1 << w) - 1)
        idx = tf.bitwise.bitwise_or(idx, tf.bitwise.left_shift(tf.reshape(fields, tf.shape(idx)), shift))
        start += 8 * w
        shift += w
    return tf.reshape(idx, [out_features, nb * layout.BLOCK])[:, :in_features]


def _activate(y, activation):
    if activation == "RELU":
        return tf.nn.relu(y)
    if activation == "RELU6":
        return tf.nn.relu6(y)
    if activation == "RELU_N1_TO_1":
        return tf.clip_by_value(y, -1.0, 1.0)
    return y


@functools.lru_cache(maxsize=None)
def _fc_function(bits, in_features, out_features, activation, with_bias):
    attrs = {
        "version": GQ_FC_VERSION,
        "bits": bits,
        "in_features": in_features,
        "out_features": out_features,
        "block_size": layout.BLOCK,
    }
    implements = f'name: "{GQ_FC_NAME}" attr {{key: "tfl_fusable_op" value {{b: true}}}}'
    implements += "".join(f' attr {{key: "{k}" value {{i: {v}}}}}' for k, v in attrs.items())
    implements += f' attr {{key: "fused_activation" value {{s: "{activation}"}}}}'

    def body(x, packed, centroids, *bias):
        w = tf.gather(centroids, decode_indices(packed, bits, in_features, out_features))
        y = tf.tensordot(x, tf.transpose(w), axes=1)
        if bias:
            y = y + bias[0]
        return _activate(y, activation)

    if with_bias:
        return tf.function(lambda x, packed, centroids, bias: body(x, packed, centroids, bias),
                           experimental_implements=implements, autograph=False)
    return tf.function(lambda x, packed, centroids: body(x, packed, centroids),
                       experimental_implements=implements, autograph=False)


def gq_fully_connected(x, packed, centroids, bias=None, *, bits, in_features, out_features,
                       activation="NONE"):
    """``y = act(x @ W^T + bias)``, ``W = centroids[unpack(packed)]``: one GQ_FULLY_CONNECTED.

    Args:
      x: float32 [..., in_features].
      packed: uint8 [layout.packed_size(bits, in, out)], planes64 layout.
      centroids: float32 [2**bits].
      bias: float32 [out_features] or None.
      bits, in_features, out_features: the op's options.
      activation: one of ``ACTIVATIONS``.

    Returns:
      float32 [..., out_features].
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"Expected activation in {ACTIVATIONS}. Received: {activation!r}")
    layout.packed_size(bits, in_features, out_features)  # validates the options
    fn = _fc_function(int(bits), int(in_features), int(out_features), activation, bias is not None)
    args = (x, packed, centroids) if bias is None else (x, packed, centroids, bias)
    return fn(*args)
