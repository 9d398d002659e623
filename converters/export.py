"""Exporting a gq_tf QAT model to a .tflite file with packed GQ custom ops.

The QAT graph itself is never converted (its quantizer math would be baked
into the file and LSTM fusion lost). Instead:

1. the learned codebooks are read (``gq_tf.extract_codebooks``) and the model
   is rebuilt in float with the hard-quantized weights (``strip_quantization``);
2. in that deployment graph every packable GQ kernel is replaced by a call of
   a ``tfops`` function with the packed indices, which the converter fuses into
   one custom op (no float copy of the kernel is left):
   - Dense, attention projections, Conv1D and Conv2D: ``GQ_FULLY_CONNECTED``
     (a convolution reads patches made of builtin PAD / STRIDED_SLICE /
     CONCATENATION ops);
   - a Keras-default LSTM whose kernel and recurrent kernel are both GQ:
     one ``GQ_LSTM``;
3. the TFLite converter runs on it (fixed batch size, builtin ops only);
4. weight tensors that should be int8 (``gq_tf.Uniform`` kernels, and with
   ``weights="dynamic_int8"`` the remaining float weights of layers without
   a quantizer) are rewritten to int8 with the exact QAT grid, and their ops
   run as TFLite's dynamic-range ("hybrid") kernels.

A model that mixes GQ with tfmot's default 8-bit scheme (``gq_tf.Tfmot8Bit``,
or tfmot's ``quantize_annotate_layer``) keeps its 8-bit layers as tfmot made
them (fake-quant weights and activations, input ``QuantizeLayer``) in the
deployment graph, and the converter runs in its QAT mode: they become int8
builtin ops with the learned ranges, QUANTIZE / DEQUANTIZE at their borders.
An 8-bit layer whose input has no learned range (it reads a GQ attention
layer, or the model was made under tfmot's own scheme, not
``gq_tf.QuantizeScheme``) keeps int8 weights and quantizes its input at run
time (dynamic range), with a warning.

GQ kernels of other layers (depthwise convolutions, Embedding, LSTMs with
other activations or options, grouped convolutions) have no packed op yet:
they are exported as builtin ops with their decoded (hard) float weights, with
a warning and a report row.
"""

import dataclasses
import itertools
import os
import warnings

import numpy as np

from converters import flatbuf, layout, tfops
from gq_tf._keras import check_keras_model, keras, tf
from gq_tf._tfmot import is_wrapper
from gq_tf.codebooks import Codebook, extract_codebooks, quantized_weights, strip_gq, strip_quantization
from gq_tf.configs import is_qat, layer_scheme, quantize_scope
from gq_tf.fileio import atomic_write

__all__ = ["export_tflite", "export_baseline", "deployed_sizes", "ExportReport", "KernelRow", "WEIGHTS_MODES",
           "NotPackedWarning", "PACKED", "PACKED_LSTM", "PACKED_KINDS", "INT8", "TFMOT_INT8", "FLOAT_DECODED",
           "FLOAT"]

WEIGHTS_MODES = ("float", "dynamic_int8")
# Like the TFLite converter's dynamic-range quantization: smaller weight
# tensors are not worth an int8 kernel.
DYNAMIC_MIN_ELEMENTS = 1024

PACKED = "packed GQ_FULLY_CONNECTED"
PACKED_LSTM = "packed GQ_LSTM"
PACKED_KINDS = (PACKED, PACKED_LSTM)
INT8 = "builtin, int8 weights"
TFMOT_INT8 = "builtin int8 (weights and activations)"
FLOAT_DECODED = "builtin, decoded float weights (not packed)"
FLOAT = "builtin, float weights"


class NotPackedWarning(UserWarning):
    """A GQ kernel was exported with decoded float weights, not packed."""


@dataclasses.dataclass(frozen=True)
class KernelRow:
    """How one quantized kernel (or, with dynamic_int8, one float kernel) was deployed."""

    key: str  # "<layer>/<weight>"
    bits: int  # 32 for float kernels
    method: str  # "gq", "uniform", "tfmot8" (tfmot's default 8-bit QAT) or "float"
    deployed: str  # PACKED, PACKED_LSTM, INT8, TFMOT_INT8, FLOAT_DECODED or FLOAT
    nbytes: int  # bytes of the kernel in the file (indices + centroids, int8 + scales, or float)
    shape: tuple

    @property
    def packed(self):
        """True when the kernel is read packed by a GQ custom op."""
        return self.deployed in PACKED_KINDS


@dataclasses.dataclass
class ExportReport:
    """What ``export_tflite`` wrote."""

    path: str
    size_bytes: int
    op_counts: dict
    kernels: list
    weights: str = "float"
    warnings: list = dataclasses.field(default_factory=list)

    @property
    def packed_bytes(self):
        """Bytes of packed indices + centroid tables of the GQ custom ops."""
        return sum(k.nbytes for k in self.kernels if k.packed)

    def table(self):
        """The kernels as a Markdown table, then the op counts and file size."""
        rows = [("kernel", "shape", "method", "bits", "deployed as", "bytes")]
        rows += [(k.key, "x".join(map(str, k.shape)), k.method, str(k.bits), k.deployed, f"{k.nbytes:,}")
                 for k in self.kernels]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        ops = ", ".join(f"{k} x{v}" for k, v in self.op_counts.items())
        lines += ["", f"ops: {ops}", f"file: {self.path} ({self.size_bytes:,} bytes)"]
        return "\n".join(lines)


def _fused_activation(activation):
    """(fused op activation, activation to apply after the op or None)."""
    if activation in (None, keras.activations.linear):
        return "NONE", None
    if activation is keras.activations.relu:
        return "RELU", None
    return "NONE", activation


def _dim(x, axis):
    """A static size when known, else the dynamic one (a scalar tensor)."""
    d = x.shape[axis]
    return d if d is not None else tf.shape(x)[axis]


def _max0(v):
    return max(v, 0) if isinstance(v, int) else tf.maximum(v, 0)


def conv_patches(x, kernel_size, strides, dilation, padding):
    """Convolution patches of a channels-last ``x``, built from builtin ops only.

    ``x`` is [B, *spatial, C]. The result is [B, *out_spatial, prod(k) * C]:
    the taps of each output position concatenated tap-major, channel-minor
    (tap (i, j) of a 2-D kernel before (i, j + 1)), which is the order of a
    Keras kernel [*k, C, out] reshaped to [prod(k) * C, out]. Padding follows
    TensorFlow: "valid", "same" (extra pad at the end when odd) and "causal"
    (Conv1D: all the pad before). Lowers to PAD, STRIDED_SLICE and
    CONCATENATION (never EXTRACT_IMAGE_PATCHES, a Flex op).
    """
    pads, outs, sizes = [[0, 0]], [], []
    for a, (k, s, d) in enumerate(zip(kernel_size, strides, dilation)):
        n = _dim(x, 1 + a)
        span = (k - 1) * d + 1
        if padding == "same":
            out = (n + s - 1) // s
            total = _max0((out - 1) * s + span - n)
            lo, hi = total // 2, total - total // 2
        elif padding == "causal":
            lo, hi = span - 1, 0
            out = (n - 1) // s + 1
        else:  # valid
            lo, hi = 0, 0
            out = (n - span) // s + 1
        pads.append([lo, hi])
        outs.append(out)
        sizes.append(n)
    pads.append([0, 0])
    if any(not (isinstance(v, int) and v == 0) for p in pads for v in p):
        x = tf.pad(x, tf.convert_to_tensor(pads) if any(isinstance(v, tf.Tensor) for p in pads for v in p)
                   else pads)
        sizes = [n + p[0] + p[1] if isinstance(n, int) and all(isinstance(v, int) for v in p) else None
                 for n, p in zip(sizes, pads[1:-1])]
    taps = []
    for tap in itertools.product(*(range(k) for k in kernel_size)):
        index = [slice(None)]
        for t, s, d, out, n in zip(tap, strides, dilation, outs, sizes):
            begin, end = t * d, t * d + (out - 1) * s + 1
            whole = begin == 0 and s == 1 and isinstance(end, int) and end == n
            index.append(slice(None) if whole else slice(begin, end, s))
        index.append(slice(None))
        taps.append(x[tuple(index)])
    return taps[0] if len(taps) == 1 else tf.concat(taps, axis=-1)


class _PackedFullyConnected(keras.layers.Layer):
    """Deployment-graph layer: one GQ_FULLY_CONNECTED with packed weights.

    ``merge`` trailing input axes are flattened into the op's input features
    and the output features are split back into ``out_shape`` (attention's
    EinsumDense projections); ``conv`` = (kernel_size, strides, dilation,
    padding) first turns a channels-last input into convolution patches
    (Conv1D, Conv2D).
    """

    def __init__(self, packed, centroids, bias, bits, in_features, out_features, activation,
                 conv=None, merge=1, out_shape=None, **kwargs):
        super().__init__(**kwargs)
        self._packed, self._centroids, self._bias = packed, centroids, bias
        self._bits, self._in, self._out = bits, in_features, out_features
        self._fused, self._after = _fused_activation(activation)
        self._conv, self._merge = conv, merge
        self._out_shape = tuple(out_shape) if out_shape is not None else (out_features,)

    def call(self, x):
        if self._conv is not None:
            x = conv_patches(x, *self._conv)
        static = x.shape[: x.shape.rank - self._merge]
        # Static sizes where the graph has them: the converter then sees the
        # shapes after the custom op (no SHAPE ops; tfmot's 8-bit FC after a GQ
        # layer keeps its fused bias).
        lead = static.as_list() if static.is_fully_defined() else tf.shape(x)[: x.shape.rank - self._merge]
        if self._merge > 1:
            x = tf.reshape(x, tf.concat([lead, [self._in]], 0))
        y = tfops.gq_fully_connected(
            tf.cast(x, tf.float32), tf.constant(self._packed), tf.constant(self._centroids),
            None if self._bias is None else tf.constant(self._bias),
            bits=self._bits, in_features=self._in, out_features=self._out, activation=self._fused)
        y.set_shape(static.concatenate([self._out]))
        if len(self._out_shape) > 1 or self._merge > 1:
            y = tf.reshape(y, tf.concat([lead, self._out_shape], 0))
        return y if self._after is None else self._after(y)


class _PackedLSTM(keras.layers.Layer):
    """Deployment-graph layer: a Keras-default LSTM as one GQ_LSTM custom op.

    Called like the LSTM it replaces: ``(x, initial_state=[h, c], mask=None,
    training=None)``, or with ``[x, h, c]`` as inputs (how a functional model
    records an LSTM call with an initial state); returns ``y`` or
    ``[y, h_T, c_T]`` as Keras does.
    """

    def __init__(self, kernel, recurrent, bias, in_features, units, return_sequences, return_state,
                 **kwargs):
        super().__init__(**kwargs)
        (self._packed, self._centroids, self._kbits), (self._rpacked, self._rcentroids, self._rbits) = kernel, recurrent
        self._bias, self._in, self._units = bias, in_features, units
        self._return_sequences, self._return_state = return_sequences, return_state

    def call(self, inputs, mask=None, training=None, initial_state=None):
        del training  # dropout is inactive at inference
        if mask is not None:
            raise ValueError(f"Layer '{self.name}': GQ_LSTM does not support masks (the export "
                             "keeps masked LSTMs decoded).")
        x = inputs
        if isinstance(inputs, (list, tuple)):
            x, *state = inputs
            if state:
                initial_state = state
        if initial_state is not None:
            initial_state = [tf.cast(s, tf.float32) for s in tf.nest.flatten(initial_state)]
            if len(initial_state) != 2:
                raise ValueError(f"Layer '{self.name}': expected initial_state [h, c]. Received "
                                 f"{len(initial_state)} tensors.")
        out = tfops.gq_lstm(
            tf.cast(x, tf.float32), tf.constant(self._packed), tf.constant(self._centroids),
            tf.constant(self._rpacked), tf.constant(self._rcentroids),
            None if self._bias is None else tf.constant(self._bias), initial_state,
            kernel_bits=self._kbits, recurrent_bits=self._rbits, in_features=self._in, units=self._units,
            return_sequences=self._return_sequences, return_state=self._return_state)
        return list(out) if self._return_state else out


def _einsum_split(dense):
    """(contracted axes, output axes) if the EinsumDense is a plain matmul, else None.

    True when the kernel's leading axes are the input's trailing axes (summed
    away) and its other axes are appended to the output, as in every
    projection of keras.layers.MultiHeadAttention ("abc,cde->abde",
    "abcd,cde->abe").
    """
    try:
        lhs, out = dense.equation.replace(" ", "").split("->")
        x, k = lhs.split(",")
    except ValueError:
        return None
    for c in range(1, len(k)):
        contracted, free = k[:c], k[c:]
        if x.endswith(contracted) and out == x[: len(x) - c] + free and not set(free) & set(x):
            return c, len(free)
    return None


_MHA_SUBLAYERS = {"query": "_query_dense", "key": "_key_dense", "value": "_value_dense",
                  "output": "_output_dense"}
_LSTM_WEIGHTS = ("kernel", "recurrent_kernel")


def _receives_mask(wrapper):
    """True when a call of this (wrapped) layer gets a Keras mask."""
    for node in getattr(wrapper, "_inbound_nodes", []):
        if node.call_kwargs.get("mask") is not None:
            return True
        x = tf.nest.flatten(node.call_args[0] if node.call_args else [])[:1]
        if x and getattr(x[0], "_keras_mask", None) is not None:
            return True
    return False


def _lstm_unsupported(layer):
    """Why this LSTM is not a Keras-default LSTM that GQ_LSTM runs, or None."""
    why = []
    if layer.activation is not keras.activations.tanh:
        why.append(f"activation={getattr(layer.activation, '__name__', layer.activation)!s}")
    if layer.recurrent_activation is not keras.activations.sigmoid:
        why.append("recurrent_activation="
                   f"{getattr(layer.recurrent_activation, '__name__', layer.recurrent_activation)!s}")
    for flag in ("go_backwards", "stateful", "time_major"):
        if getattr(layer, flag):
            why.append(f"{flag}=True")
    if not why:
        return None
    return f"LSTM with {', '.join(why)}: GQ_LSTM runs Keras' default LSTM only (tanh, sigmoid, forward, stateless)"


def _packable(layer, weight_name):
    """Why this kernel cannot be packed, or None if it can."""
    kind = type(layer).__name__
    if type(layer) is keras.layers.Dense and weight_name == "kernel":
        return None
    if type(layer) in (keras.layers.Conv1D, keras.layers.Conv2D) and weight_name == "kernel":
        if layer.groups != 1:
            return f"{kind} with groups={layer.groups} (only 1 is packed)"
        if layer.data_format != "channels_last":
            return f"{kind} with data_format={layer.data_format} (only channels_last is packed)"
        return None
    if type(layer) is keras.layers.LSTM and weight_name in _LSTM_WEIGHTS:
        return _lstm_unsupported(layer)
    if isinstance(layer, keras.layers.MultiHeadAttention) and weight_name in _MHA_SUBLAYERS:
        dense = getattr(layer, _MHA_SUBLAYERS[weight_name])
        if _einsum_split(dense) is None or dense.activation not in (None, keras.activations.linear):
            return f"attention {weight_name} projection '{dense.equation}' is not a plain matmul"
        return None
    return f"{kind} {weight_name} has no packed op yet"


def _plan(qat_model):
    """Codebooks, {layer name: {weight name: (key, codebook)}} to pack, and the warnings."""
    books = extract_codebooks(qat_model)
    wrappers = {wrapper.layer.name: wrapper for wrapper in qat_model.layers if is_wrapper(wrapper)}
    packs, notes = {}, []
    for qw in quantized_weights(qat_model):
        book = books[qw.key]
        if book.method != "gq":
            continue
        layer = wrappers[qw.layer_name].layer
        why = _packable(layer, qw.weight_name)
        if why is None and type(layer) is keras.layers.LSTM and _receives_mask(wrappers[qw.layer_name]):
            why = "LSTM called with a mask (GQ_LSTM has no masked steps)"
        if why is None:
            packs.setdefault(qw.layer_name, {})[qw.weight_name] = (qw.key, book)
        else:
            notes.append((qw.key, why))
    # GQ_LSTM reads both matrices packed: an LSTM with only one GQ kernel
    # stays a builtin LSTM.
    for name, kernels in list(packs.items()):
        if type(wrappers[name].layer) is keras.layers.LSTM and set(kernels) != set(_LSTM_WEIGHTS):
            other = next(w for w in _LSTM_WEIGHTS if w not in kernels)
            method = books[f"{name}/{other}"].method if f"{name}/{other}" in books else "float"
            for key, _ in kernels.values():
                notes.append((key, f"GQ_LSTM needs both LSTM kernels GQ-quantized ({other} is {method})"))
            del packs[name]
    return books, packs, notes


def _packed_dims(layer, weight_name, shape):
    """(in, out) of the GQ op that reads this kernel: its output axes (the last
    one; an attention projection's free axes) become the op's rows."""
    n_free = 1
    if isinstance(layer, keras.layers.MultiHeadAttention):
        n_free = _einsum_split(getattr(layer, _MHA_SUBLAYERS[weight_name]))[1]
    out_f = int(np.prod(shape[len(shape) - n_free:]))
    return int(np.prod(shape)) // out_f, out_f


def deployed_sizes(kernels, floats=frozenset()):
    """Size model for ``gq_tf.allocate_bits``: the bytes ``export_tflite`` writes per kernel.

    Args:
      kernels: ``gq_tf.allocation.kernels(float_model)``.
      floats: keys of the kernels the policy keeps float.

    Returns:
      ``{key: {bits: bytes, None: bytes}}``: a packed kernel takes its
      planes64 layout (rows padded to 64 weights, ``converters.layout``) plus
      the float32 centroid table; a GQ kernel the exporter cannot pack (see
      ``_packable``; an LSTM whose other kernel stays float; a masked LSTM)
      and a kernel kept float take 4 bytes per weight at any bits. These are
      the ``nbytes`` of the export report's rows.
    """
    out = {}
    for k in kernels:
        float_bytes = 4 * k.size
        packable = _packable(k.layer, k.weight_name) is None
        if packable and type(k.layer) is keras.layers.LSTM:
            both = all(f"{k.layer_name}/{w}" not in floats for w in _LSTM_WEIGHTS)
            packable = both and not _receives_mask(k.layer)
        if packable:
            in_f, out_f = _packed_dims(k.layer, k.weight_name, k.shape)
            row = {b: layout.packed_size(b, in_f, out_f) + 4 * 2**b for b in range(1, 9)}
        else:
            row = dict.fromkeys(range(1, 9), float_bytes)
        out[k.key] = {**row, None: float_bytes}
    return out


def _bias_of(source):
    bias = getattr(source, "bias", None)
    return None if bias is None else bias.numpy().astype(np.float32).reshape(-1)


def _packed_layer(source, book, *, merge, out_shape, conv=None, name):
    """The _PackedFullyConnected that replaces kernel ``book`` of layer ``source``."""
    # Kernel axes are [contracted..., output...]: a convolution's [*k, cin, out]
    # flattens to the tap-major, channel-minor order of conv_patches.
    kernel_idx = book.indices.reshape(-1, int(np.prod(out_shape)))
    w_idx = np.ascontiguousarray(kernel_idx.T)  # [out, in]
    out_f, in_f = w_idx.shape
    return _PackedFullyConnected(
        layout.pack(w_idx, book.bits), book.centroids.astype(np.float32), _bias_of(source), book.bits,
        in_f, out_f, source.activation, conv=conv, merge=merge, out_shape=out_shape, name=name)


def _packed_lstm(layer, kernels):
    """The _PackedLSTM that replaces ``layer``, and {kernel key: (op name, bits, in, out)}."""
    (kkey, kbook), (rkey, rbook) = kernels["kernel"], kernels["recurrent_kernel"]
    in_f, four_u = kbook.indices.shape
    units = four_u // 4

    def packed(book):  # Keras [rows, 4u] -> W^T [4u, rows], gates i, f, c, o
        return (layout.pack(np.ascontiguousarray(book.indices.T), book.bits),
                book.centroids.astype(np.float32), book.bits)

    bias = layer.cell.bias.numpy().astype(np.float32) if layer.use_bias else None
    new = _PackedLSTM(packed(kbook), packed(rbook), bias, in_f, units, layer.return_sequences,
                      layer.return_state, name=layer.name)
    return new, {kkey: (tfops.GQ_LSTM_NAME, kbook.bits, in_f, four_u),
                 rkey: (tfops.GQ_LSTM_NAME, rbook.bits, units, four_u)}


class _OutputRange(keras.layers.Layer):
    """A layer whose output goes through a fixed 8-bit fake quantization: the
    learned QAT output range of a GQ layer that an 8-bit layer reads, which the
    converter turns into that layer's int8 input."""

    def __init__(self, layer, lo, hi):
        super().__init__(name=f"{layer.name}_range")
        self._inner, self._lo, self._hi = layer, float(lo), float(hi)

    def call(self, *args, **kwargs):
        return tf.quantization.fake_quant_with_min_max_vars(self._inner(*args, **kwargs), self._lo, self._hi,
                                                            num_bits=8, narrow_range=False)


def _deployment_model(float_model, packs, ops=None, ranges=None):
    """Clone of the float model with the packed layers swapped in.

    ``ops`` (a dict) receives {kernel key: (op name, bits, in, out)} of each
    packed kernel; ``ranges`` ({layer name: (min, max)}) puts an 8-bit output
    range after those layers.
    """
    ops = {} if ops is None else ops
    ranges = ranges or {}

    def packed(source, key, book, **kw):
        layer = _packed_layer(source, book, **kw)
        ops[key] = (tfops.GQ_FC_NAME, book.bits, layer._in, layer._out)
        return layer

    def swap(layer):
        if layer.name not in packs:
            return layer  # reuse: the float model is ours and thrown away afterwards
        kernels = packs[layer.name]
        if isinstance(layer, keras.layers.MultiHeadAttention):
            # The attention layer keeps its own call (masks, softmax, dropout);
            # only its projections change.
            for weight_name, (key, book) in kernels.items():
                attr = _MHA_SUBLAYERS[weight_name]
                dense = getattr(layer, attr)
                merge, n_free = _einsum_split(dense)
                out_shape = book.indices.shape[-n_free:]
                setattr(layer, attr, packed(dense, key, book, merge=merge, out_shape=out_shape,
                                            name=f"{layer.name}_{weight_name}"))
            return layer
        if isinstance(layer, keras.layers.LSTM):
            new, lstm_ops = _packed_lstm(layer, kernels)
            ops.update(lstm_ops)
            return new
        ((key, book),) = kernels.values()
        conv = None
        if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D)):
            conv = (tuple(layer.kernel_size), tuple(layer.strides), tuple(layer.dilation_rate), layer.padding)
        return packed(layer, key, book, merge=1, out_shape=book.indices.shape[-1:], conv=conv,
                      name=layer.name)

    def clone(layer):
        new = swap(layer)
        return _OutputRange(new, *ranges[layer.name]) if layer.name in ranges else new

    with quantize_scope():
        return keras.models.clone_model(float_model, clone_function=clone)


def _signature(model, input_signature, batch_size):
    if input_signature is not None:
        specs = list(input_signature) if isinstance(input_signature, (list, tuple)) else [input_signature]
        if not all(isinstance(s, tf.TensorSpec) for s in specs) or len(specs) != len(model.inputs):
            raise ValueError(
                f"Expected input_signature as {len(model.inputs)} tf.TensorSpec (one per model "
                f"input). Received {input_signature!r}.")
        return specs
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1. Received: batch_size={batch_size!r}")
    specs = []
    for inp in model.inputs:
        shape = [int(batch_size)] + list(inp.shape[1:])
        if any(d is None for d in shape):
            raise ValueError(
                f"Expected static input shapes apart from the batch. Input '{inp.name}' has shape "
                f"{tuple(inp.shape)}: pass input_signature=[tf.TensorSpec(...)] with every size set.")
        specs.append(tf.TensorSpec(shape, inp.dtype, name=inp.name.split(":")[0]))
    return specs


def _convert(model, specs, optimize=False):
    single = len(specs) == 1

    @tf.function(input_signature=specs, autograph=False)
    def serve(*xs):
        return model(xs[0] if single else list(xs), training=False)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        return converter.convert()
    except Exception as e:  # the converter raises ConverterError and plain Exceptions
        raise ValueError(
            f"The TFLite converter could not convert the deployment graph of '{model.name}': "
            f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}") from e


def _value_sets(books):
    """{kernel key: (sorted unique values, method, codebook or None)} for provenance matching.

    The converter moves weights around (transposes, splits LSTM gates) but does
    not change their values, so a weight tensor in the file belongs to the
    kernel whose value set contains all of its values.
    """
    sets = {}
    for key, book in books.items():
        if book.method == "gq":
            sets[key] = (np.unique(book.centroids.astype(np.float32)), "gq", book)
        else:
            sets[key] = (np.unique(book.decode().astype(np.float32)), "uniform", book)
    return sets


def _uniform_scale(book):
    """Step of a gq_tf.Uniform grid (its int8 scale): values are q * scale, |q| <= 127."""
    c = book.centroids.astype(np.float64)
    return float(c[1]) if book.bits == 1 else float(c[2 ** (book.bits - 1) + 1])


def _float_kernels(float_model, books):
    """{key: values} of the float (unquantized) kernels, for dynamic_int8."""
    out = {}
    quantized_layers = {k.split("/")[0] for k in books}
    for layer in float_model.layers:
        if layer.name in quantized_layers or layer_scheme(layer) is not None:
            continue
        for w in layer.weights:
            if w.shape.rank is not None and w.shape.rank >= 2:
                out[f"{layer.name}/{w.name.split('/')[-1].split(':')[0]}"] = w.numpy()
    return out


def _scaled_uniform_step(values, book):
    """Grid step if ``values`` are a gq_tf.Uniform grid times one constant, else None.

    The converter folds constant scalings into a kernel (attention multiplies
    the query by 1/sqrt(key_dim)); a scaled grid is still a grid, so it stays
    exactly representable in int8.
    """
    # The largest used grid point (index 0, -128 steps, is never used).
    umax, gmax = float(np.abs(values).max()), float(np.abs(book.decode()).max())
    if umax == 0.0 or gmax == 0.0:
        return None
    step = _uniform_scale(book) * umax / gmax
    return step if _on_grid(values, step) is not None else None


def _on_grid(values, step):
    """``values / step`` as integers if they all are (within 1e-3) and |q| <= 127, else None."""
    q = values.astype(np.float64) / step
    r = np.round(q)
    return r.astype(np.int64) if np.abs(r).max() <= 127 and np.all(np.abs(q - r) < 1e-3) else None


def _weight_ops(model):
    """(subgraph, op, quantization axis, [tensor index of each weight input it has])
    of the builtin ops with weight inputs (``flatbuf.WEIGHT_INPUTS``)."""
    for sub in model.subgraphs:
        for op in sub.operators or []:
            code = flatbuf.builtin_code(model, op)
            if code in flatbuf.WEIGHT_INPUTS:
                slots, axis = flatbuf.WEIGHT_INPUTS[code]
                yield sub, op, axis, [op.inputs[i] for i in slots if i < len(op.inputs) and op.inputs[i] >= 0]


def _match_weights(model, books, float_kernels):
    """[(op, axis, [(tensor index, data, owner key, method, step)])] of the weight ops.

    A slot that matches no kernel has owner None.
    """
    value_sets = _value_sets(books)
    float_sets = {k: np.unique(v.astype(np.float32)) for k, v in float_kernels.items()}
    ops = []
    for sub, op, axis, slots in _weight_ops(model):
        entries = []
        for ti in slots:
            t = sub.tensors[ti]
            data = flatbuf.tensor_data(model, t)
            if data is None or t.type != flatbuf.schema.TensorType.FLOAT32:
                entries.append((ti, None, None, None, None))
                continue
            u = np.unique(data)
            owner = next((k for k, (vals, _, _) in value_sets.items()
                          if u.size <= vals.size and np.isin(u, vals).all()), None)
            if owner is None:
                owner = next((k for k, vals in float_sets.items() if np.isin(u, vals).all()), None)
            method = None if owner is None else value_sets[owner][1] if owner in value_sets else "float"
            step = _uniform_scale(value_sets[owner][2]) if method == "uniform" else None
            entries.append((ti, data, owner, method, step))
        ops.append((sub, op, axis, entries))
    # Second chance for unmatched tensors: a uniform kernel of the same size,
    # scaled by the converter, preferring kernels not found anywhere yet.
    found = {e[2] for *_, entries in ops for e in entries if e[2] is not None}
    uniform = sorted((k for k, v in value_sets.items() if v[1] == "uniform"), key=lambda k: k in found)
    for i, (sub, op, axis, entries) in enumerate(ops):
        for j, (ti, data, owner, method, step) in enumerate(entries):
            if owner is not None or data is None:
                continue
            for key in uniform:
                book = value_sets[key][2]
                if book.indices.size == data.size and (step := _scaled_uniform_step(data, book)) is not None:
                    entries[j] = (ti, data, key, "uniform", step)
                    break
    return ops


def _int8_pass(model, books, float_kernels, weights):
    """Rewrites int8-bound weight tensors; returns {key: [(bytes, int8?, method)]}."""
    found = {}
    for sub, op, axis, entries in _match_weights(model, books, float_kernels):
        # TFLite's hybrid kernels need every weight of an op in int8 (LSTM):
        # quantize an op only if all of its weights are meant to be int8.
        want = [m == "uniform" or (m == "float" and weights == "dynamic_int8" and d.size >= DYNAMIC_MIN_ELEMENTS)
                for _, d, _, m, _ in entries]
        all_int8 = bool(entries) and all(want)
        for ti, data, owner, method, step in entries:
            if owner is None:
                continue
            if not all_int8:
                found.setdefault(owner, []).append((4 * data.size, False, method))
                continue
            if method == "uniform":
                q, scales, qaxis = np.round(data.astype(np.float64) / step), [step], None
                if flatbuf.builtin_code(model, op) in flatbuf.PER_CHANNEL_ONLY:
                    # One grid, its step repeated for every channel.
                    scales, qaxis = [step] * data.shape[axis], axis
            else:  # per channel (per tensor for the LSTM), as the converter would
                qaxis = axis
                if axis is None:
                    amax = np.max(np.abs(data))
                else:
                    amax = np.max(np.abs(data), axis=tuple(i for i in range(data.ndim) if i != axis), keepdims=True)
                scale = np.maximum(amax, 1e-30) / 127.0
                q, scales = np.round(data / scale), np.reshape(scale, -1)
            flatbuf.quantize_tensor_int8(model, sub, ti, np.clip(q, -127, 127), scales, qaxis)
            found.setdefault(owner, []).append((data.size + 4 * len(scales), True, method))
        if all_int8:
            _set_asymmetric_inputs(op)
    return found


def _set_asymmetric_inputs(op):
    # The converter's dynamic-range mode quantizes activations per batch row
    # with a zero point ("asymmetric"), which is more accurate than symmetric.
    opts = op.builtinOptions
    if opts is not None and hasattr(opts, "asymmetricQuantizeInputs"):
        opts.asymmetricQuantizeInputs = True


def _schemes(qat_model):
    """{layer name: gq_tf.configs.layer_scheme} of a model export_tflite deploys."""
    schemes = {layer.name: layer_scheme(layer) for layer in qat_model.layers}
    if "gq" not in schemes.values() and {"tfmot8", "input"} & set(schemes.values()):
        raise ValueError(
            f"Expected a model with gq_tf-quantized layers. Received model '{qat_model.name}', a plain tfmot QAT "
            "model (every quantized layer is under tfmot's 8-bit scheme): convert it with tf.lite.TFLiteConverter "
            "(converter.optimizations = [tf.lite.Optimize.DEFAULT]), or put GQ on some of its layers "
            "(gq_tf.quantize_model with a policy, or gq_tf.quantize_annotate_layer).")
    return schemes


def _tfmot_kernels(qat_model):
    """{"<layer>/<weight>": (weight as the 8-bit QAT model uses it, Codebook of its
    grid or None)} of the layers under tfmot's 8-bit scheme.

    The Codebook (a ``gq_tf.Uniform``-like 8-bit grid, exactly the values the
    model uses) is there when the weight is on one symmetric per-tensor grid
    (tfmot's Dense and LSTM configs), so an op the converter leaves in float
    can still get the learned int8 weights.
    """
    out = {}
    for wrapper in qat_model.layers:
        if layer_scheme(wrapper) != "tfmot8":
            continue
        for var, quantizer, qvars in wrapper._weight_vars:  # noqa: SLF001
            values = np.asarray(quantizer(var, False, weights=qvars), np.float32)
            key = f"{wrapper.layer.name}/{var.name.split(':')[0].split('/')[-1]}"
            out[key] = (values, _grid_book(values))
    return out


def _grid_book(values):
    """An 8-bit Codebook whose centroids hold ``values`` exactly, if they are
    q * step with integers |q| <= 127; else None."""
    amax = float(np.abs(values).max())
    if amax == 0.0:
        return None
    step = amax / 127.0
    q = _on_grid(values, step)
    if q is None:
        return None
    centroids = (step * np.arange(-128, 128)).astype(np.float32)
    centroids[q.ravel() + 128] = values.ravel()
    return Codebook(bits=8, centroids=centroids, indices=(q + 128).astype(np.uint8), method="uniform")


def _int8_weights(model, tfmot):
    """{tfmot kernel key: (bytes, int8 input?)} of the int8 weight tensors the
    converter made of the 8-bit layers' weights (matched by their values)."""
    left = dict(tfmot)
    found = {}
    for sub, op, _, slots in _weight_ops(model):
        for ti in slots:
            t = sub.tensors[ti]
            q = flatbuf.tensor_data(model, t)
            if q is None or t.type != flatbuf.schema.TensorType.INT8 or t.quantization is None:
                continue
            scale = np.asarray(t.quantization.scale, np.float64)
            zero = np.asarray(t.quantization.zeroPoint if t.quantization.zeroPoint is not None else [0])
            shape = [1] * q.ndim
            if scale.size > 1:
                shape[t.quantization.quantizedDimension] = scale.size
            values = np.sort(((q - zero.reshape(shape)) * scale.reshape(shape)).ravel())
            for key, (want, _) in list(left.items()):
                if want.size == values.size and np.allclose(np.sort(want.ravel()), values,
                                                            atol=0.51 * float(scale.max()), rtol=0):
                    int8_in = sub.tensors[op.inputs[0]].type == flatbuf.schema.TensorType.INT8
                    found[key] = (q.size + 4 * scale.size, int8_in)
                    del left[key]
                    break
    return found


def _check_destination(path):
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise ValueError(f"Expected a file path for the .tflite file. Received a directory: {path}")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Expected an existing directory for {path}. '{directory}' does not exist.")
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"Expected a writable directory for {path}. '{directory}' is not writable.")
    return path


def export_tflite(qat_model, path, *, input_signature=None, batch_size=1, weights="float"):
    """Exports a gq_tf QAT model to ``path`` (.tflite) with packed GQ custom ops.

    Args:
      qat_model: a model made by ``gq_tf.quantize_model`` (trained or not).
      path: where to write the .tflite file; written atomically (a failed
        export leaves no partial file).
      input_signature: optional list of ``tf.TensorSpec``, one per model
        input, with every size set; default: the model's input shapes with
        the batch set to ``batch_size``.
      batch_size: the fixed batch of the exported graph (TFLite's LSTM needs
        a static batch).
      weights: "float" keeps the weights of unquantized layers in float32;
        "dynamic_int8" stores them in int8 (dynamic-range ops), as a uniform
        8-bit deployment would.

    Returns:
      ExportReport (path, size, op counts, one row per kernel).

    Raises:
      TypeError, ValueError: not a built gq_tf QAT model, bad arguments, or a
        graph the converter cannot convert.
      FileNotFoundError, PermissionError: the destination cannot be written.

    Example:
      >>> report = converters.export_tflite(qat, "model.tflite")
      >>> print(report.table())
    """
    check_keras_model(qat_model, "qat_model")
    if weights not in WEIGHTS_MODES:
        raise ValueError(f"Expected weights in {WEIGHTS_MODES}. Received: weights={weights!r}")
    path = _check_destination(path)
    specs = _signature(qat_model, input_signature, batch_size)
    mixed = bool({"tfmot8", "input"} & set(_schemes(qat_model).values()))
    books, packs, notes = _plan(qat_model)

    if mixed:  # tfmot's 8-bit layers stay as they are, for the converter's QAT mode
        float_model, ranges = strip_gq(qat_model)
        tfmot = _tfmot_kernels(qat_model)
    else:
        float_model, ranges, tfmot = strip_quantization(qat_model), {}, {}
    float_kernels = _float_kernels(float_model, books)
    deploy_ops = {}  # key -> (op name, bits, in, out) of the custom op that reads it
    deploy = _deployment_model(float_model, packs, deploy_ops, ranges)
    model = flatbuf.read(_convert(deploy, specs, optimize=mixed))
    int8_weights = _int8_weights(model, tfmot)
    grids = {k: book for k, (_, book) in tfmot.items() if book is not None and k not in int8_weights}
    found = _int8_pass(model, {**books, **grids}, float_kernels, weights)
    data = flatbuf.write(model)

    packed_ops = _packed_ops(model)
    rows, messages = [], []
    for key, book in books.items():
        shape = tuple(book.indices.shape)
        layer_name, weight_name = key.split("/", 1)
        if weight_name in packs.get(layer_name, {}):
            op = deploy_ops[key]
            if op not in packed_ops:
                raise RuntimeError(f"Internal error: the packed op of {key} {op} is missing from the converted model.")
            nbytes = layout.packed_size(*op[1:]) + 4 * 2**book.bits
            deployed = PACKED_LSTM if op[0] == tfops.GQ_LSTM_NAME else PACKED
            rows.append(KernelRow(key, book.bits, "gq", deployed, nbytes, shape))
            continue
        parts = found.get(key, [])
        int8 = bool(parts) and all(p[1] for p in parts)
        nbytes = sum(p[0] for p in parts) if parts else 4 * int(np.prod(shape))
        deployed = INT8 if int8 else (FLOAT_DECODED if book.method == "gq" else FLOAT)
        rows.append(KernelRow(key, book.bits, book.method, deployed, nbytes, shape))
    for key, values in float_kernels.items():
        parts = found.get(key)
        if parts:
            int8 = all(p[1] for p in parts)
            rows.append(KernelRow(key, 32 if not int8 else 8, "float", INT8 if int8 else FLOAT,
                                  sum(p[0] for p in parts), tuple(values.shape)))
    for key, (values, _) in tfmot.items():
        shape = tuple(values.shape)
        if key in int8_weights:
            nbytes, int8_in = int8_weights[key]
            rows.append(KernelRow(key, 8, "tfmot8", TFMOT_INT8 if int8_in else INT8, nbytes, shape))
            if not int8_in:
                messages.append(f"{key}: tfmot 8-bit layer exported with int8 weights and dynamic-range inputs "
                                "(its input has no learned 8-bit range).")
            continue
        parts = found.get(key, [])
        int8 = bool(parts) and all(p[1] for p in parts)
        rows.append(KernelRow(key, 8, "tfmot8", INT8 if int8 else FLOAT,
                              sum(p[0] for p in parts) if parts else 4 * values.size, shape))
        messages.append(
            f"{key}: tfmot 8-bit layer exported with " + ("int8 weights and dynamic-range inputs" if int8 else
                                                           "float weights (the 8-bit values)")
            + ": its input has no learned 8-bit range (it reads a GQ attention or multi-output layer, or the model "
            "was made under tfmot's own scheme; gq_tf.QuantizeScheme gives GQ layers that feed 8-bit layers one).")
    for key, why in notes:
        messages.append(f"{key}: exported with decoded float weights, not packed ({why}).")
    for key, book in books.items():
        if book.method == "uniform" and not any(r.key == key and r.deployed == INT8 for r in rows):
            messages.append(f"{key}: uniform {book.bits}-bit kernel kept in float (no int8 builtin op for it).")
    for m in messages:
        warnings.warn(m, NotPackedWarning, stacklevel=2)

    atomic_write(path, data)
    return ExportReport(path=path, size_bytes=len(data), op_counts=flatbuf.op_counts(model),
                        kernels=rows, weights=weights, warnings=messages)


BASELINES = ("float", "int8")


def export_baseline(model, path, *, kind="int8", input_signature=None, batch_size=1):
    """Exports a plain model the usual way, as the peer a GQ export is measured against.

    Args:
      model: a float tf_keras model, or a gq_tf QAT model (its hard-quantized
        weights are then exported as plain floats, ``strip_quantization``).
      path: the .tflite file to write (atomically).
      kind: "float" (float32 weights) or "int8" (the TFLite converter's
        dynamic-range quantization: int8 weights for every kernel).
      input_signature, batch_size: as in ``export_tflite``.

    Returns:
      ExportReport (no kernel rows).
    """
    check_keras_model(model, "model")
    if kind not in BASELINES:
        raise ValueError(f"Expected kind in {BASELINES}. Received: kind={kind!r}")
    path = _check_destination(path)
    specs = _signature(model, input_signature, batch_size)
    if is_qat(model):
        model = strip_quantization(model)
    data = _convert(model, specs, optimize=kind == "int8")
    atomic_write(path, data)
    return ExportReport(path=path, size_bytes=len(data), op_counts=flatbuf.op_counts(flatbuf.read(data)),
                        kernels=[], weights=kind)


def _packed_ops(model):
    """{(op name, bits, in, out)} of the packed matrices the GQ custom ops of the model read."""
    ops = set()
    for sub in model.subgraphs:
        for op in sub.operators or []:
            name = flatbuf.op_name(model, op)
            if name == tfops.GQ_FC_NAME:
                o = flatbuf.custom_options(op)
                ops.add((name, o["bits"], o["in_features"], o["out_features"]))
            elif name == tfops.GQ_LSTM_NAME:
                o = flatbuf.custom_options(op)
                ops.add((name, o["kernel_bits"], o["in_features"], 4 * o["units"]))
                ops.add((name, o["recurrent_bits"], o["units"], 4 * o["units"]))
    return ops
