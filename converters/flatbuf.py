"""Reading and editing .tflite flatbuffers (LiteRT's generated schema classes).

Used to inspect converted models (op counts, tensors, custom options) and for
the one edit the converter cannot be told to do selectively: giving chosen
weight tensors exact int8 values and scales (dynamic-range "hybrid" ops).
"""

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from flatbuffers import flexbuffers

__all__ = ["read", "write", "buffer_offsets", "BUFFER_ALIGNMENT", "builtin_name", "builtin_code", "op_name",
           "op_counts", "tensor_data", "custom_options", "quantize_tensor_int8", "WEIGHT_INPUTS", "PER_CHANNEL_ONLY"]

_BUILTIN_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_NP_TYPES = {
    schema.TensorType.FLOAT32: np.float32,
    schema.TensorType.INT8: np.int8,
    schema.TensorType.UINT8: np.uint8,
    schema.TensorType.INT32: np.int32,
    schema.TensorType.INT64: np.int64,
}

# Builtin ops TFLite runs with int8 weights and float activations ("hybrid"),
# with the weight inputs and the axis of per-channel scales (None: TFLite's
# kernel takes one scale per tensor only).
WEIGHT_INPUTS = {
    schema.BuiltinOperator.FULLY_CONNECTED: ((1,), 0),
    schema.BuiltinOperator.CONV_2D: ((1,), 0),
    schema.BuiltinOperator.DEPTHWISE_CONV_2D: ((1,), 3),
    schema.BuiltinOperator.UNIDIRECTIONAL_SEQUENCE_LSTM: ((1, 2, 3, 4, 5, 6, 7, 8), None),
}
# Hybrid kernels that read one scale per output channel whatever the tensor
# says: TFLite's hybrid depthwise convolution indexes its filter scales by
# channel, so a per-tensor scale makes every channel but the first read past
# the scale array (wrong outputs, no error).
PER_CHANNEL_ONLY = {schema.BuiltinOperator.DEPTHWISE_CONV_2D}


def read(data):
    """ModelT of .tflite bytes."""
    return schema.ModelT.InitFromPackedBuf(bytearray(data), 0)


# Alignment of every buffer's data in written files. The schema asks for 16
# (force_align), which the Python generator ignores (it packs at 1); the
# SIMD kernels read packed weights in place, and 64-byte (cache-line)
# alignment keeps their 64-byte loads within one line: a 16-byte offset was
# measured to cost 10-45% of a 512x512 GQ layer.
BUFFER_ALIGNMENT = 64


class _AlignedBufferT(schema.BufferT):
    """BufferT whose data vector starts on a BUFFER_ALIGNMENT boundary."""

    def Pack(self, builder):
        data = None
        if self.data is not None:
            raw = np.ascontiguousarray(self.data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(raw), BUFFER_ALIGNMENT)
            builder.head = builder.head - len(raw)
            builder.Bytes[builder.head:builder.head + len(raw)] = raw
            builder.vectorNumElems = len(raw)
            data = builder.EndVector()
        schema.BufferStart(builder)
        if data is not None:
            schema.BufferAddData(builder, data)
        schema.BufferAddOffset(builder, self.offset)
        schema.BufferAddSize(builder, self.size)
        return schema.BufferEnd(builder)


def write(model):
    """Serialises a ModelT back to .tflite bytes, every buffer's data aligned
    to BUFFER_ALIGNMENT bytes from the start of the file (flatbuffers align
    from the end and pad the total to the largest alignment used, so both
    agree)."""
    for i, buf in enumerate(model.buffers or []):
        if not isinstance(buf, _AlignedBufferT):
            aligned = _AlignedBufferT()
            aligned.__dict__.update(buf.__dict__)
            model.buffers[i] = aligned
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def buffer_offsets(data):
    """{buffer index: file offset of its data} of .tflite bytes (buffers with
    data only)."""
    data = bytearray(data)
    root = schema.Model.GetRootAs(data, 0)
    base = np.frombuffer(data, np.uint8).ctypes.data
    out = {}
    for i in range(root.BuffersLength()):
        b = root.Buffers(i)
        if b.DataLength() > 0:
            out[i] = b.DataAsNumpy().ctypes.data - base
    return out


def builtin_name(code):
    return _BUILTIN_NAMES.get(code, f"BUILTIN_{code}")


def builtin_code(model, op):
    """The BuiltinOperator code of an op (CUSTOM for custom ops)."""
    opcode = model.operatorCodes[op.opcodeIndex]
    # Codes >= 127 live only in builtinCode; older ones in both fields.
    return max(opcode.builtinCode, opcode.deprecatedBuiltinCode)


def op_name(model, op):
    """Builtin op name, or the custom name of a CUSTOM op."""
    code = builtin_code(model, op)
    if code == schema.BuiltinOperator.CUSTOM:
        return model.operatorCodes[op.opcodeIndex].customCode.decode()
    return builtin_name(code)


def op_counts(model):
    """{op name: count} over every subgraph; custom ops by their custom name."""
    counts = {}
    for sub in model.subgraphs:
        for op in sub.operators or []:
            name = op_name(model, op)
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def tensor_data(model, tensor):
    """The constant data of a tensor as a shaped NumPy array, or None."""
    buf = model.buffers[tensor.buffer]
    if buf.data is None or len(buf.data) == 0 or tensor.type not in _NP_TYPES:
        return None
    return np.frombuffer(bytes(buf.data), _NP_TYPES[tensor.type]).reshape(
        [] if tensor.shape is None else list(tensor.shape))


def custom_options(op):
    """Decoded flexbuffer custom options of an op ({} if none)."""
    if op.customOptions is None or len(op.customOptions) == 0:
        return {}
    return flexbuffers.Loads(bytes(op.customOptions))


def quantize_tensor_int8(model, sub, tensor_index, q, scales, axis):
    """Turns a float weight tensor into int8 ``q`` with ``scales`` (zero points 0).

    A buffer shared with another tensor is left to that tensor: the int8 data
    gets a buffer of its own.
    """
    tensor = sub.tensors[tensor_index]
    shared = sum(t.buffer == tensor.buffer for s in model.subgraphs for t in s.tensors) > 1
    buf = schema.BufferT()
    buf.data = np.ascontiguousarray(q, np.int8).reshape(-1).view(np.uint8)
    if shared:
        model.buffers.append(buf)
        tensor.buffer = len(model.buffers) - 1
    else:
        model.buffers[tensor.buffer] = buf
    tensor.type = schema.TensorType.INT8
    qp = schema.QuantizationParametersT()
    qp.scale = np.asarray(scales, np.float32).reshape(-1)
    qp.zeroPoint = np.zeros(qp.scale.size, np.int64)
    qp.quantizedDimension = 0 if axis is None else int(axis)
    tensor.quantization = qp
