"""Structural checks of a .tflite model, run before any runtime reads it.

The TFLite runtimes trust the indices, sizes and roles a model's flatbuffer
declares, and some defects they do not catch end in a crash instead of an
error. The one that motivated this module: a graph input that names a
constant tensor. The runtime maps constants read-only from the model file,
so ``allocate_tensors`` succeeds and the first ``set_tensor`` on that input
writes into read-only memory (SIGSEGV). ``check_model`` refuses such a model
with a ``ValueError`` that names the subgraph and the tensor or node, before
an interpreter exists. ``converters.make_interpreter`` and
``python -m android_bench run`` (before anything is pushed to a phone) call
it on every model.

What is refused (docs/EXPORT.md, "Model checks"):

1. Subgraph inputs and outputs (and SignatureDef inputs and outputs) that are
   constant tensors: their buffer holds data.
2. Indices out of range: subgraph inputs and outputs, node inputs and
   intermediates (``-1``, "no tensor", is allowed there only), node outputs,
   opcode indices, tensor and metadata buffer indices, SignatureDef subgraph
   and tensor indices, and the subgraph indices of control-flow ops
   (``SUBGRAPH_OPTIONS``: WHILE, IF, CALL_ONCE, CALL and the StableHLO ops).
3. Sizes: a negative dimension in a tensor's shape (``-1`` is allowed in
   ``shape_signature`` only, where it means "dynamic"), a byte size that
   overflows int64, a constant tensor whose buffer holds fewer bytes than
   its shape and type need, and data stored outside the flatbuffer (models
   over 2 GB: buffer ``offset``/``size``, large custom options) that does
   not lie within the file.
4. ``GQ_*`` custom ops whose packed weights, centroids or bias (``GQ_INPUTS``)
   come from a graph input or from another node, or a required one given as
   ``-1``, or centroids or a bias without data that no node writes: the
   delegate reads them in place as model constants. Packed weights without
   data, and a node that reads its own output, are left to the delegate,
   which rejects them in Prepare with messages of its own.

The flatbuffer is read with the generated accessor classes
(``ai_edge_litert.schema_py_generated``), which read fields in place: no
buffer's data is read or copied, so a 400 MB float Conformer encoder (2,221
tensors) takes about 0.1 s of CPU. A flatbuffer too damaged to read gives a
``ValueError`` too.

Example:
  >>> from converters.modelcheck import check_model
  >>> check_model("model.tflite")  # None, or ValueError naming the defect
"""

import functools
import math
import mmap
import os
from pathlib import Path
from typing import NamedTuple

__all__ = ["check_model", "Arity", "BUILTIN_ARITY", "COUNT_OPTIONS", "GQInput", "GQ_INPUTS", "SUBGRAPH_OPTIONS",
           "TYPE_BITS"]

_BUILTIN_CUSTOM = 32
_TFLITE_IDENTIFIER = b"TFL3"
_INT64_MAX = 2**63 - 1

# Bits per element of each TensorType, by its name in the schema; None: no
# fixed size (strings, resources, variants), not checked against a buffer.
# tests/converters/test_model_checks.py checks that every type of the schema is here.
TYPE_BITS = {
    "FLOAT32": 32, "FLOAT16": 16, "BFLOAT16": 16, "FLOAT64": 64, "FLOAT8_E4M3FN": 8, "FLOAT8_E5M2": 8,
    "INT64": 64, "INT32": 32, "INT16": 16, "INT8": 8, "INT4": 4, "INT2": 2,
    "UINT64": 64, "UINT32": 32, "UINT16": 16, "UINT8": 8, "UINT4": 4,
    "BOOL": 8, "COMPLEX64": 64, "COMPLEX128": 128,
    "STRING": None, "RESOURCE": None, "VARIANT": None,
}


class GQInput(NamedTuple):
    """One input of a GQ custom op that must be a model constant."""

    role: str  # for messages, e.g. "centroids"
    required: bool  # False: may be -1 ("no tensor"), as the bias
    packed: bool  # packed weights: the delegate's Prepare rejects a tensor without data itself


def _gq_fc_inputs(num_inputs):
    del num_inputs  # the same positions with 3 and 4 inputs
    return {1: GQInput("packed weights", True, True), 2: GQInput("centroids", True, False),
            3: GQInput("bias", False, False)}


def _gq_lstm_inputs(num_inputs):
    roles = {1: GQInput("kernel (packed)", True, True), 2: GQInput("kernel centroids", True, False),
             3: GQInput("recurrent kernel (packed)", True, True), 4: GQInput("recurrent centroids", True, False)}
    if num_inputs in (6, 8):  # the bias comes right after the weights (docs/EXPORT.md)
        roles[5] = GQInput("bias", False, False)
    return roles


# The inputs of each GQ custom op that must be model constants, by the
# node's input count: {input position: GQInput}. The contracts are in
# docs/EXPORT.md; the delegate (converters/delegate) reads these in place.
GQ_INPUTS = {
    "GQ_FULLY_CONNECTED": _gq_fc_inputs,
    "GQ_LSTM": _gq_lstm_inputs,
}

class Arity(NamedTuple):
    """The inputs and outputs a builtin op's kernel reads without checking them itself."""

    inputs: tuple  # (fewest, most); most None: any number
    outputs: tuple  # (fewest, most)
    optional: frozenset = frozenset()  # input positions that may be -1 (no tensor)


def _arity(inputs, outputs=1, optional=()):
    def as_range(v):
        return v if isinstance(v, tuple) else (v, v)

    return Arity(as_range(inputs), as_range(outputs), frozenset(optional))


# Builtin ops whose kernels (TFLite's, and XNNPACK's when it takes the node)
# index their inputs and outputs unchecked: a node with too few of them, or
# with -1 (no tensor) where one is required, crashed the process in
# allocate_tensors (tests/support/fuzz_entry.py found TRANSPOSE with input 0 = -1 and
# STRIDED_SLICE with 2 inputs). Every builtin op our exports use is here
# (tests/converters/test_model_checks.py checks the demo's graphs); builtin ops that are
# not here are left to the runtime. From TFLite's operator reference.
BUILTIN_ARITY = {
    **{name: _arity(1) for name in ("ABS", "CAST", "DEQUANTIZE", "ELU", "EXP", "FLOOR", "GELU", "HARD_SWISH",
                                    "LEAKY_RELU", "LOG", "LOGISTIC", "LOG_SOFTMAX", "NEG", "QUANTIZE", "RELU",
                                    "RELU6", "RELU_N1_TO_1", "RSQRT", "SHAPE", "SIN", "SOFTMAX", "SQRT", "SQUARE",
                                    "SQUEEZE", "TANH", "ZEROS_LIKE", "L2_NORMALIZATION", "AVERAGE_POOL_2D",
                                    "MAX_POOL_2D")},
    **{name: _arity(2) for name in ("ADD", "BATCH_MATMUL", "DIV", "EXPAND_DIMS", "FLOOR_DIV", "GATHER",
                                    "GATHER_ND", "MAXIMUM", "MEAN", "MINIMUM", "MUL", "PAD", "POW", "REDUCE_MAX",
                                    "REDUCE_MIN", "REDUCE_PROD", "SQUARED_DIFFERENCE", "SUB", "SUM", "TILE",
                                    "TRANSPOSE", "EQUAL", "NOT_EQUAL", "LESS", "LESS_EQUAL", "GREATER",
                                    "GREATER_EQUAL", "ARG_MAX", "ARG_MIN", "BROADCAST_TO")},
    **{name: _arity(3) for name in ("SELECT", "SELECT_V2", "SLICE", "PADV2")},
    "CONCATENATION": _arity((1, None)),
    "PACK": _arity((1, None)),
    "ADD_N": _arity((1, None)),
    "UNPACK": _arity(1, (1, None)),
    "SPLIT": _arity(2, (1, None)),
    "SPLIT_V": _arity(3, (1, None)),
    "RESHAPE": _arity((1, 2), optional=(1,)),  # the shape may come from the options instead
    "STRIDED_SLICE": _arity(4),
    "CONV_2D": _arity((2, 3), optional=(2,)),
    "DEPTHWISE_CONV_2D": _arity((2, 3), optional=(2,)),
    "TRANSPOSE_CONV": _arity((3, 4), optional=(3,)),
    "FULLY_CONNECTED": _arity((2, 3), (1, 2), optional=(2,)),
}


# Builtin options that count a node's inputs or outputs: op -> (options class,
# accessor, "inputs" or "outputs"). A count that disagrees with the node (a
# SPLIT of 32772 pieces with 4 outputs) crashed the process in
# allocate_tensors (found by tests/support/fuzz_entry.py).
COUNT_OPTIONS = {
    "SPLIT": ("SplitOptions", "NumSplits", "outputs"),
    "SPLIT_V": ("SplitVOptions", "NumSplits", "outputs"),
    "UNPACK": ("UnpackOptions", "Num", "outputs"),
    "PACK": ("PackOptions", "ValuesCount", "inputs"),
}


# Builtin options that name subgraphs: (options class in the schema, its
# accessors that return one subgraph index, its accessors that return a
# vector of them). Keyed by the class name, which is also its name in the
# BuiltinOptions / BuiltinOptions2 unions. tests/converters/test_model_checks.py checks
# that every schema class with a subgraph accessor is listed here.
SUBGRAPH_OPTIONS = {
    "WhileOptions": (("CondSubgraphIndex", "BodySubgraphIndex"), ()),
    "IfOptions": (("ThenSubgraphIndex", "ElseSubgraphIndex"), ()),
    "CallOnceOptions": (("InitSubgraphIndex",), ()),
    "CallOptions": (("Subgraph",), ()),
    "StablehloWhileOptions": (("CondSubgraphIndex", "BodySubgraphIndex"), ()),
    "StablehloReduceOptions": (("BodySubgraphIndex",), ()),
    "StablehloReduceWindowOptions": (("BodySubgraphIndex",), ()),
    "StablehloSortOptions": (("ComparatorSubgraphIndex",), ()),
    "StablehloScatterOptions": (("UpdateComputationSubgraphIndex",), ()),
    "StableHLOCompositeOptions": (("DecompositionSubgraphIndex",), ()),
    "StablehloCaseOptions": ((), ("BranchSubgraphIndices",)),
}


class _Refused(ValueError):
    """A defect found by a check (as opposed to a read failure)."""


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def model_source(model):
    """(keyword arguments for an Interpreter, display name, the model's bytes or a read-only map of its file),
    for a model given as a path or as bytes; checks the TFLite file identifier."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        name = f"<{len(data)} bytes>"
        if len(data) < 8 or data[4:8] != _TFLITE_IDENTIFIER:
            raise ValueError(
                f"Expected the bytes of a TFLite model (file identifier {_TFLITE_IDENTIFIER!r} "
                f"at offset 4). Received {name} starting with {data[:8]!r}."
            )
        return {"model_content": data}, name, data
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"TFLite model not found: {str(path)!r}")
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8 or head[4:8] != _TFLITE_IDENTIFIER:
                raise ValueError(
                    f"Expected a TFLite model file (file identifier {_TFLITE_IDENTIFIER!r} at "
                    f"offset 4). Received {str(path)!r} starting with {head!r}."
                )
            # A read-only map: big models are not read into memory twice.
            view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return {"model_path": str(path)}, repr(str(path)), view
    raise TypeError(
        "Expected a model path (str or os.PathLike) or the model's bytes. "
        f"Received an object of type {type(model).__name__}."
    )


def check_model(model_path_or_bytes):
    """Checks a .tflite model's structure before a runtime loads it.

    Args:
      model_path_or_bytes: path of a .tflite file (``str`` or
        ``os.PathLike``), or the model's bytes. A file is mapped read-only,
        not read into memory.

    Raises:
      ValueError: not a TFLite model, a flatbuffer too damaged to read, or a
        model the checks refuse (module docstring); the message names the
        subgraph, the tensor (index and name) or node (index and op), what
        was expected and what was received.
      FileNotFoundError: the file does not exist.
      TypeError: ``model_path_or_bytes`` is neither a path nor bytes.

    Example:
      >>> check_model("runs/demo/gq_mixed.tflite")  # returns None
      >>> check_model(edited)  # a graph input that names a constant
      ValueError: Model <1792 bytes>, subgraph 0, graph input 0: Expected a
      tensor without data (set by the caller; constants are mapped read-only
      from the model file). Received tensor 2 'Const_1', a constant with 32
      bytes of data.
    """
    _, name, buf = model_source(model_path_or_bytes)
    try:
        check_bytes(buf, name)
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()


def check_bytes(buf, name):
    """``check_model`` on model bytes already in memory or mapped.

    Args:
      buf: the whole file (``bytes``, ``bytearray`` or a read-only ``mmap``);
        nothing is kept that refers to it once this returns, and the pages
        of a map that the checks touched are unmapped again.
      name: how messages name the model (e.g. its path).

    Raises:
      ValueError: as ``check_model``.
    """
    try:
        _Checker(buf, name).run()
        return
    except _Refused as e:
        message = str(e)
    except Exception as e:  # the flatbuffer reader raises anything on damaged data
        message = f"Model {name} is not a readable TFLite flatbuffer: {type(e).__name__}: {e}"
    finally:
        _release_pages(buf)
    # Raised outside the handlers: the error carries no traceback of the
    # reader's frames, so nothing keeps a view of ``buf`` (an mmap with a
    # view alive cannot be closed).
    raise ValueError(message)


def _release_pages(buf):
    """Unmaps the pages of a file mapping that the checks touched.

    Reading a field faults in the file's pages around it (here 2 MiB at a
    time: the page cache uses huge pages), and each is counted in this
    process's RSS once per mapping that holds it: without this, the pages
    the checks read would count a second time once a runtime maps the same
    file. The page cache keeps them, so nothing is read from disk again.
    """
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if isinstance(buf, mmap.mmap) and advice is not None and not buf.closed:
        buf.madvise(advice)


class _Subgraph:
    """What the node checks need to know about one subgraph's tensors."""

    def __init__(self, index, sub):
        self.index = index
        self.sub = sub
        self.count = 0
        self.names = {}  # tensor index -> name, read on demand
        self.constant_bytes = []  # bytes of data of each tensor's buffer (0: not a constant)
        self.inputs = []
        self.outputs = []


class _Checker:
    def __init__(self, buf, name):
        self.schema = _schema()
        self.buf = buf
        self.size = len(buf)
        self.name = name
        self.model = None

    # ------------------------------------------------------------ helpers

    def refuse(self, where, expected, received):
        raise _Refused(f"Model {self.name}, {where}: Expected {expected}. Received {received}.")

    @staticmethod
    def span(n):
        """The valid indices of a list of ``n`` entries, for messages."""
        return f"0..{n - 1}" if n > 0 else "none (the list is empty)"

    def length(self, n, what):
        """A vector length, bounded by the file (4 bytes an entry at least)."""
        if n < 0 or 4 * n > self.size:
            raise IndexError(f"{what} has {n} entries, more than a {self.size}-byte file can hold")
        return n

    @staticmethod
    def ints(vector):
        """A numeric vector accessor's value (ndarray, or 0 when absent) as a list."""
        return [] if isinstance(vector, int) else vector.tolist()

    def tensor_name(self, g, t):
        if t not in g.names:
            raw = g.sub.Tensors(t).Name()
            g.names[t] = raw.decode("utf-8", "replace") if raw is not None else ""
        return g.names[t]

    def utf8(self, raw, where, what):
        """Checks that a name the runtime's Python API decodes is UTF-8 (it raises UnicodeDecodeError)."""
        if raw is None:
            return
        try:
            bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            self.refuse(where, f"a UTF-8 {what}", f"{bytes(raw)!r} (byte {e.start} is not UTF-8)")

    def tensor_ref(self, g, t):
        return f"tensor {t} {self.tensor_name(g, t)!r}"

    def op_name(self, opcode_index):
        schema = self.schema
        code = self.model.OperatorCodes(opcode_index)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == _BUILTIN_CUSTOM:
            custom = code.CustomCode()
            return custom.decode("utf-8", "replace") if custom is not None else "CUSTOM"
        return _names(schema.BuiltinOperator).get(builtin, f"BUILTIN_{builtin}")

    def is_builtin(self, opcode_index):
        code = self.model.OperatorCodes(opcode_index)
        return max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) != _BUILTIN_CUSTOM

    # ------------------------------------------------------------- checks

    def run(self):
        schema = self.schema
        self.model = model = schema.Model.GetRootAs(self.buf, 0)
        self.num_buffers = self.length(model.BuffersLength(), "the buffer list")
        self.num_opcodes = self.length(model.OperatorCodesLength(), "the operator code list")
        self.num_subgraphs = self.length(model.SubgraphsLength(), "the subgraph list")
        self.buffer_bytes = [self.data_bytes(b) for b in range(self.num_buffers)]
        for c in range(self.num_opcodes):
            self.utf8(model.OperatorCodes(c).CustomCode(), f"operator code {c}", "custom op name")
        for m in range(self.length(model.MetadataLength(), "the metadata list")):
            b = model.Metadata(m).Buffer()
            if b >= self.num_buffers:
                self.refuse(f"metadata {m}", f"a buffer index in {self.span(self.num_buffers)}", f"buffer {b}")
        self.op_names = {}
        graphs = [self.check_tensors(s) for s in range(self.num_subgraphs)]
        for g in graphs:
            self.check_graph_io(g)
            self.check_nodes(g)
        self.check_signatures(graphs)

    def data_bytes(self, b):
        """Bytes of data of buffer ``b``, after checking that they lie within the file."""
        buffer = self.model.Buffers(b)
        n = buffer.DataLength()
        if n > 0:
            if n > self.size:
                raise IndexError(f"buffer {b} claims {n} bytes of data in a {self.size}-byte file")
            buffer.Data(n - 1)  # raises when the vector runs past the end of the file
            return n
        offset, size = buffer.Offset(), buffer.Size()
        if offset > 1:  # data outside the flatbuffer (models over 2 GB), from the start of the file
            if offset + size > self.size:
                self.refuse(f"buffer {b}", f"its data (offset {offset}, {size} bytes) within the file "
                            f"of {self.size} bytes",
                            f"data that ends at byte {offset + size}, past the end of the file")
            return size
        return 0

    def check_tensors(self, s):
        sub = self.model.Subgraphs(s)
        g = _Subgraph(s, sub)
        g.count = self.length(sub.TensorsLength(), f"subgraph {s}'s tensor list")
        for t in range(g.count):
            tensor = sub.Tensors(t)
            self.utf8(tensor.Name(), f"subgraph {s}, tensor {t}", "tensor name")
            b = tensor.Buffer()
            if b >= self.num_buffers:
                self.refuse(f"subgraph {s}, {self.tensor_ref(g, t)}",
                            f"a buffer index in {self.span(self.num_buffers)}", f"buffer {b}")
            # Buffer 0 is the schema's empty sentinel: never a constant.
            data = self.buffer_bytes[b] if b != 0 else 0
            g.constant_bytes.append(data)
            shape = self.ints(tensor.ShapeAsNumpy())
            if any(d < 0 for d in shape):
                self.refuse(f"subgraph {s}, {self.tensor_ref(g, t)}",
                            "a shape of dimensions >= 0 (-1, dynamic, belongs in shape_signature)",
                            f"shape {shape}")
            signature = self.ints(tensor.ShapeSignatureAsNumpy())
            if any(d < -1 for d in signature):
                self.refuse(f"subgraph {s}, {self.tensor_ref(g, t)}",
                            "a shape_signature of dimensions >= -1", f"shape_signature {signature}")
            kind = tensor.Type()
            type_name = _names(self.schema.TensorType).get(kind)
            if type_name not in TYPE_BITS:
                self.refuse(f"subgraph {s}, {self.tensor_ref(g, t)}",
                            "a TensorType of the schema", f"type {kind}")
            bits = TYPE_BITS[type_name]
            if bits is None:
                continue
            count = math.prod(shape)
            need = -(-count * bits // 8)
            if need > _INT64_MAX:
                self.refuse(f"subgraph {s}, {self.tensor_ref(g, t)}", "a size in bytes that fits in int64",
                            f"shape {shape} of {type_name}: {need} bytes")
            # Sparse constants store fewer values than their dense shape.
            if data and need > data and tensor.Sparsity() is None:
                self.refuse(f"subgraph {s}, {self.tensor_ref(g, t)}",
                            f"buffer {b} to hold the {need} bytes that shape {shape} of "
                            f"{type_name} needs",
                            f"{data} bytes: the tensor would exceed what the file can hold for it")
        return g

    def check_tensor_index(self, g, t, where, optional=False):
        low = -1 if optional else 0
        if not low <= t < g.count:
            allowed = self.span(g.count) + (" or -1 (no tensor)" if optional else "")
            self.refuse(f"subgraph {g.index}, {where}", f"a tensor index in {allowed}", f"index {t}")

    def check_graph_io(self, g):
        g.inputs = self.ints(g.sub.InputsAsNumpy())
        g.outputs = self.ints(g.sub.OutputsAsNumpy())
        for kind, indices in (("input", g.inputs), ("output", g.outputs)):
            for i, t in enumerate(indices):
                self.check_tensor_index(g, t, f"graph {kind} {i}")
                if g.constant_bytes[t]:
                    role = "set by the caller" if kind == "input" else "written by the graph"
                    self.refuse(f"subgraph {g.index}, graph {kind} {i}",
                                f"a tensor without data ({role}; constants are mapped read-only from "
                                "the model file)",
                                f"{self.tensor_ref(g, t)}, a constant with {g.constant_bytes[t]} bytes of data")

    def check_nodes(self, g):
        sub = g.sub
        s = g.index
        num_ops = self.length(sub.OperatorsLength(), f"subgraph {s}'s operator list")
        writers = {}  # tensor index -> the nodes that write it
        gq_nodes = []
        for k in range(num_ops):
            op = sub.Operators(k)
            code = op.OpcodeIndex()
            if code >= self.num_opcodes:
                self.refuse(f"subgraph {s}, node {k}",
                            f"an opcode index in {self.span(self.num_opcodes)}", f"opcode index {code}")
            name = self.op_names.get(code)
            if name is None:
                name = self.op_names[code] = self.op_name(code)
            node = f"node {k} ({name})"
            inputs = self.ints(op.InputsAsNumpy())
            outputs = self.ints(op.OutputsAsNumpy())
            arity = BUILTIN_ARITY.get(name) if self.is_builtin(code) else None
            if arity is not None:
                self.check_arity(f"subgraph {s}, {node}", name, arity, inputs, outputs)
                if name in COUNT_OPTIONS:
                    self.check_counts(op, f"subgraph {s}, {node}", name, inputs, outputs)
            for i, t in enumerate(inputs):
                self.check_tensor_index(g, t, f"{node}, input {i}", optional=True)
            for i, t in enumerate(outputs):
                self.check_tensor_index(g, t, f"{node}, output {i}")
                writers.setdefault(t, []).append(k)
            for i, t in enumerate(self.ints(op.IntermediatesAsNumpy())):
                self.check_tensor_index(g, t, f"{node}, intermediate {i}", optional=True)
            self.check_subgraph_options(op, f"subgraph {s}, {node}")
            offset = op.LargeCustomOptionsOffset()
            if offset > 1:
                size = op.LargeCustomOptionsSize()
                if offset + size > self.size:
                    self.refuse(f"subgraph {s}, {node}",
                                f"its custom options (offset {offset}, {size} bytes) within the file of "
                                f"{self.size} bytes", f"options that end at byte {offset + size}")
            if name in GQ_INPUTS:
                gq_nodes.append((k, name, inputs))
        graph_inputs = set(g.inputs)
        for k, name, inputs in gq_nodes:
            for i, slot in GQ_INPUTS[name](len(inputs)).items():
                if i >= len(inputs):
                    continue  # the delegate reports a wrong input count
                t = inputs[i]
                where = f"subgraph {s}, node {k} ({name}), input {i} ({slot.role})"
                expected = f"a constant tensor of the model ({name} reads its {slot.role} in place)"
                if t == -1:
                    if slot.required:
                        self.refuse(where, expected, "-1 (no tensor)")
                    continue
                if t in graph_inputs:
                    self.refuse(where, expected, f"{self.tensor_ref(g, t)}, a graph input")
                # A node that reads its own output is a cycle, which the
                # delegate reports in Prepare (its message names both ends).
                written_by = writers.get(t, [])
                others = [w for w in written_by if w != k]
                if others:
                    w = others[0]
                    self.refuse(where, expected, f"{self.tensor_ref(g, t)}, an output of node {w} "
                                f"({self.op_names[sub.Operators(w).OpcodeIndex()]})")
                if sub.Tensors(t).IsVariable():
                    self.refuse(where, expected, f"{self.tensor_ref(g, t)}, a variable tensor")
                if not g.constant_bytes[t] and not written_by and not slot.packed:
                    # Nothing would ever write it: the kernel would read
                    # unwritten arena memory.
                    self.refuse(where, expected,
                                f"{self.tensor_ref(g, t)}, a tensor without data that no node writes")

    def check_arity(self, where, name, arity, inputs, outputs):
        for kind, have, (low, high) in (("inputs", len(inputs), arity.inputs),
                                        ("outputs", len(outputs), arity.outputs)):
            if have < low or (high is not None and have > high):
                wanted = str(low) if low == high else (f"{low} or more" if high is None else f"{low} to {high}")
                self.refuse(where, f"{wanted} {kind} ({name})", f"{have} {kind}")
        for i, t in enumerate(inputs):
            if t == -1 and i not in arity.optional:
                self.refuse(f"{where}, input {i}", f"a tensor ({name} requires input {i})", "-1 (no tensor)")

    def check_counts(self, op, where, name, inputs, outputs):
        cls_name, field, kind = COUNT_OPTIONS[name]
        schema = self.schema
        if _names(schema.BuiltinOptions).get(op.BuiltinOptionsType()) != cls_name or op.BuiltinOptions() is None:
            return  # no options of that class: the runtime reads its defaults
        table = op.BuiltinOptions()
        options = getattr(schema, cls_name)()
        options.Init(table.Bytes, table.Pos)
        count = getattr(options, field)()
        have = len(inputs) if kind == "inputs" else len(outputs)
        if count != have:
            self.refuse(where, f"{cls_name}.{field} equal to the node's number of {kind} ({have})", str(count))

    def check_subgraph_options(self, op, where):
        schema = self.schema
        for union, kind in ((schema.BuiltinOptions, op.BuiltinOptionsType()),
                            (schema.BuiltinOptions2, op.BuiltinOptions2Type())):
            cls_name = _names(union).get(kind)
            if cls_name not in SUBGRAPH_OPTIONS:
                continue
            table = op.BuiltinOptions() if union is schema.BuiltinOptions else op.BuiltinOptions2()
            if table is None:
                continue
            options = getattr(schema, cls_name)()
            options.Init(table.Bytes, table.Pos)
            scalars, vectors = SUBGRAPH_OPTIONS[cls_name]
            found = [(field, getattr(options, field)()) for field in scalars]
            for field in vectors:
                found += [(f"{field}[{j}]", v)
                          for j, v in enumerate(self.ints(getattr(options, field + "AsNumpy")()))]
            for field, index in found:
                if not 0 <= index < self.num_subgraphs:
                    self.refuse(where, f"{cls_name}.{field} in {self.span(self.num_subgraphs)} (the "
                                "model's subgraphs)", f"subgraph index {index}")

    def check_signatures(self, graphs):
        model = self.model
        for d in range(self.length(model.SignatureDefsLength(), "the signature list")):
            sig = model.SignatureDefs(d)
            key = sig.SignatureKey()
            self.utf8(key, f"signature {d}", "signature key")
            label = f"signature {d} {key.decode('utf-8', 'replace') if key is not None else ''!r}"
            s = sig.SubgraphIndex()
            if s >= self.num_subgraphs:
                self.refuse(label, f"a subgraph index in {self.span(self.num_subgraphs)}", f"subgraph {s}")
            g = graphs[s]
            for kind, n, get in (("input", sig.InputsLength(), sig.Inputs),
                                 ("output", sig.OutputsLength(), sig.Outputs)):
                for i in range(self.length(n, f"{label}'s {kind} list")):
                    entry = get(i)
                    raw = entry.Name()
                    self.utf8(raw, f"{label}, {kind} {i}", f"{kind} name")
                    what = f"{kind} {raw.decode('utf-8', 'replace') if raw is not None else ''!r}"
                    t = entry.TensorIndex()
                    if t >= g.count:
                        self.refuse(f"{label}, {what}",
                                    f"a tensor index of subgraph {s} in {self.span(g.count)}", f"index {t}")
                    if g.constant_bytes[t]:
                        self.refuse(f"{label}, {what}", "a tensor without data (constants are mapped "
                                    "read-only from the model file)",
                                    f"{self.tensor_ref(g, t)} of subgraph {s}, a constant with "
                                    f"{g.constant_bytes[t]} bytes of data")


@functools.lru_cache(maxsize=None)
def _names(enum_class):
    """{value: name} of a generated schema enum class."""
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_")}
