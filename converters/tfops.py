"""TensorFlow functions the TFLite converter fuses into ``GQ_*`` custom ops.

Each function is a ``tf.function`` marked ``experimental_implements`` with
``tfl_fusable_op``: the converter replaces every call by one CUSTOM op whose
custom options are a flexbuffer map of the other attributes, and keeps the
constant inputs (the packed uint8 indices) byte for byte. The body is a
plain TensorFlow implementation of the same op (it decodes the layout), so
the deployment graph also runs in TensorFlow and can be checked there.
"""

import functools

from converters import layout
from gq_tf._keras import tf

__all__ = ["GQ_FC_NAME", "GQ_FC_VERSION", "GQ_LSTM_NAME", "GQ_LSTM_VERSION", "ACTIVATIONS",
           "gq_fully_connected", "gq_lstm", "decode_indices"]

GQ_FC_NAME = "GQ_FULLY_CONNECTED"
GQ_FC_VERSION = 1
GQ_LSTM_NAME = "GQ_LSTM"
GQ_LSTM_VERSION = 1
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


def _implements(name, int_attrs, str_attrs=()):
    """The ``experimental_implements`` text of a fusable custom op with these options."""
    text = f'name: "{name}" attr {{key: "tfl_fusable_op" value {{b: true}}}}'
    text += "".join(f' attr {{key: "{k}" value {{i: {int(v)}}}}}' for k, v in int_attrs.items())
    text += "".join(f' attr {{key: "{k}" value {{s: "{v}"}}}}' for k, v in str_attrs)
    return text


@functools.lru_cache(maxsize=None)
def _fc_function(bits, in_features, out_features, activation, with_bias):
    attrs = {
        "version": GQ_FC_VERSION,
        "bits": bits,
        "in_features": in_features,
        "out_features": out_features,
        "block_size": layout.BLOCK,
    }
    implements = _implements(GQ_FC_NAME, attrs, [("fused_activation", activation)])

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


def _lstm_recurrence(xp, h, c, wr_t, return_sequences):
    """The LSTM recurrence over precomputed input projections ``xp`` [B, T, 4u].

    Gates in Keras order (i, f, c, o), Keras' default activations:
    ``z = xp_t + h @ Wr^T``, ``c = sigmoid(f) * c + sigmoid(i) * tanh(g)``,
    ``h = sigmoid(o) * tanh(c)``. Returns (y, h_T, c_T). A while loop
    (tf.scan), not an unrolled graph: the converter replaces the whole
    function anyway, and long sequences would make tracing slow.
    """
    def step(state, xp_t):
        h, c = state
        i, f, g, o = tf.split(xp_t + tf.matmul(h, wr_t), 4, axis=-1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        return tf.sigmoid(o) * tf.tanh(c), c

    hs, cs = tf.scan(step, tf.transpose(xp, [1, 0, 2]), initializer=(h, c))
    if xp.shape[1] is None:
        some = tf.shape(hs)[0] > 0
        h_t, c_t = tf.cond(some, lambda: hs[-1], lambda: h), tf.cond(some, lambda: cs[-1], lambda: c)
    elif xp.shape[1] == 0:
        h_t, c_t = h, c
    else:
        h_t, c_t = hs[-1], cs[-1]
    return (tf.transpose(hs, [1, 0, 2]) if return_sequences else h_t), h_t, c_t


@functools.lru_cache(maxsize=None)
def _lstm_function(kernel_bits, recurrent_bits, in_features, units, return_sequences, return_state,
                   with_bias, with_state):
    attrs = {
        "version": GQ_LSTM_VERSION,
        "kernel_bits": kernel_bits,
        "recurrent_bits": recurrent_bits,
        "in_features": in_features,
        "units": units,
        "return_sequences": int(return_sequences),
        "return_state": int(return_state),
        "block_size": layout.BLOCK,
    }

    def body(x, packed, centroids, rec_packed, rec_centroids, *rest):
        rest = list(rest)
        bias = rest.pop(0) if with_bias else None
        w = tf.gather(centroids, decode_indices(packed, kernel_bits, in_features, 4 * units))
        wr = tf.gather(rec_centroids, decode_indices(rec_packed, recurrent_bits, units, 4 * units))
        xp = tf.tensordot(x, tf.transpose(w), axes=1)  # the whole sequence at once
        if bias is not None:
            xp = xp + bias
        if with_state:
            h, c = rest
        else:
            h = c = tf.zeros(tf.stack([tf.shape(x)[0], units]), x.dtype)
        y, h, c = _lstm_recurrence(xp, h, c, tf.transpose(wr), return_sequences)
        return (y, h, c) if return_state else y

    # The converter fuses a call into a CUSTOM op whose inputs are exactly
    # the call's tensors, in order (optional ones absent: fewer inputs).
    return tf.function(lambda *inputs: body(*inputs),
                       experimental_implements=_implements(GQ_LSTM_NAME, attrs), autograph=False)


def gq_lstm(x, packed, centroids, rec_packed, rec_centroids, bias=None, initial_state=None, *,
            kernel_bits, recurrent_bits, in_features, units, return_sequences=False,
            return_state=False):
    """A Keras-default LSTM layer with packed GQ kernels: one GQ_LSTM custom op.

    ``W = centroids[unpack(packed)]`` is the input kernel transposed, [4u, in],
    and ``Wr = rec_centroids[unpack(rec_packed)]`` the recurrent kernel
    transposed, [4u, u], gates in Keras order (i, f, c, o). Stateless: the
    state starts from ``initial_state`` (or zeros) at every call.

    Args:
      x: float32 [B, T, in_features].
      packed: uint8 [layout.packed_size(kernel_bits, in_features, 4 * units)].
      centroids: float32 [2**kernel_bits].
      rec_packed: uint8 [layout.packed_size(recurrent_bits, units, 4 * units)].
      rec_centroids: float32 [2**recurrent_bits].
      bias: float32 [4 * units] or None.
      initial_state: [h0, c0], float32 [B, units] each, or None (zeros).
      kernel_bits, recurrent_bits, in_features, units: the op's options.
      return_sequences: y is [B, T, units] (every h_t) instead of [B, units] (h_T).
      return_state: also return h_T and c_T.

    Returns:
      y, or (y, h_T, c_T) when ``return_state``.
    """
    layout.packed_size(kernel_bits, in_features, 4 * units)  # validates the options
    layout.packed_size(recurrent_bits, units, 4 * units)
    if initial_state is not None and len(initial_state) != 2:
        raise ValueError(f"Expected initial_state as [h0, c0]. Received {len(initial_state)} tensors.")
    fn = _lstm_function(int(kernel_bits), int(recurrent_bits), int(in_features), int(units),
                        bool(return_sequences), bool(return_state), bias is not None,
                        initial_state is not None)
    args = [x, packed, centroids, rec_packed, rec_centroids]
    args += [] if bias is None else [bias]
    args += [] if initial_state is None else list(initial_state)
    out = fn(*args)
    return tuple(out) if return_state else out
