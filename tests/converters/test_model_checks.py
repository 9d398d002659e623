"""Structural model checks (``converters.modelcheck``) before a runtime reads a model.

Each check gets a valid model with one edit (``converters.flatbuf``'s object
API on small models) and must refuse it with a ValueError that names the
subgraph and the tensor or node. The regression that started it: a GQ model
whose graph input 0 names a constant (a centroid table, mapped read-only from
the file) was accepted, and ``set_tensor`` on that input crashed the process.

Models: one TensorFlow conversion each, once per module (``tests/support/fuzz_delegate.py``
builds the GQ_FULLY_CONNECTED model).
"""

import copy
import inspect
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import converters
import gq_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from converters import flatbuf, layout, modelcheck, runtime
from converters.modelcheck import check_model
from converters.runtime import make_interpreter
from tests.support import fuzz_delegate as fz

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ models


@pytest.fixture(scope="module")
def fc():
    """Two GQ_FULLY_CONNECTED nodes reading x [2, 70]. Tensors: 0 x; node 0
    reads 1 packed, 2 centroids, 3 bias; node 1 (no bias) its own pair."""
    data, _ = fz.build_gq_model([2, 70], [(3, 9, True, "RELU"), (8, 5, False, "NONE")], seed=7)
    model = flatbuf.read(data)
    sub = model.subgraphs[0]
    ops = fz.gq_ops(model)
    assert list(sub.inputs) == [0] and [len(op.inputs) for op in ops] == [4, 3]
    assert [int(i) for i in ops[0].inputs[1:]] == [1, 2, 3]
    assert sub.tensors[2].name == b"Const_1" and len(model.buffers[sub.tensors[2].buffer].data) == 32
    return data


@pytest.fixture(scope="module")
def lstm():
    """One GQ_LSTM node with 8 inputs: x, kernel, its centroids, recurrent kernel,
    its centroids, bias, h0, c0 (graph inputs x, h, c)."""
    from converters import tfops
    from gq_tf._keras import tf

    rng = np.random.default_rng(0)
    units, in_f = 5, 70
    consts = [layout.pack(rng.integers(0, 8, (4 * units, in_f)), 3), rng.normal(size=8).astype(np.float32),
              layout.pack(rng.integers(0, 4, (4 * units, units)), 2), rng.normal(size=4).astype(np.float32),
              rng.normal(size=4 * units).astype(np.float32)]
    specs = [tf.TensorSpec([2, 3, in_f], tf.float32, name="x"), tf.TensorSpec([2, units], tf.float32, name="h"),
             tf.TensorSpec([2, units], tf.float32, name="c")]

    class _Model(tf.Module):
        @tf.function(input_signature=specs)
        def f(self, x, h, c):
            return list(tfops.gq_lstm(x, *map(tf.constant, consts), [h, c], kernel_bits=3, recurrent_bits=2,
                                      in_features=in_f, units=units, return_sequences=True, return_state=True))

    module = _Model()
    data = tf.lite.TFLiteConverter.from_concrete_functions([module.f.get_concrete_function()], module).convert()
    op = _ops(flatbuf.read(data), b"GQ_LSTM")[0]
    assert len(op.inputs) == 8
    return data


@pytest.fixture(scope="module")
def loop():
    """A WHILE loop (cond and body subgraphs 1 and 2) of a dynamic count."""
    from gq_tf._keras import tf

    class _Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.int32), tf.TensorSpec([4], tf.float32)])
        def f(self, n, x):
            return tf.while_loop(lambda i, y: i < n, lambda i, y: (i + 1, y * 2.0), [0, x])[1]

    module = _Model()
    data = tf.lite.TFLiteConverter.from_concrete_functions([module.f.get_concrete_function()], module).convert()
    assert len(flatbuf.read(data).subgraphs) == 3
    return data


def _ops(model, name):
    """Nodes of subgraph 0 with a custom name (bytes) or builtin code (int)."""
    def matches(code):
        if isinstance(name, bytes):
            return code.customCode == name
        return max(code.builtinCode, code.deprecatedBuiltinCode) == name

    codes = {i for i, c in enumerate(model.operatorCodes) if matches(c)}
    return [op for op in model.subgraphs[0].operators if op.opcodeIndex in codes]


def edited(data, edit):
    """``data`` after ``edit(model)`` on its ModelT."""
    model = flatbuf.read(data)
    edit(model)
    return flatbuf.write(model)


def refused(data, *fragments):
    """Asserts that check_model refuses ``data`` with a message containing every fragment."""
    with pytest.raises(ValueError) as info:
        check_model(data)
    message = str(info.value)
    assert message.startswith(f"Model <{len(data)} bytes>"), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _set(obj, **fields):
    """Sets ModelT fields; lists become int32 arrays, as flatbuf.read gives them."""
    for key, value in fields.items():
        setattr(obj, key, np.array(value, np.int32) if isinstance(value, list) else value)


# ------------------------------------------------------- valid models pass


def test_valid_models_pass(fc, lstm, loop, tmp_path):
    for data in (fc, lstm, loop):
        assert check_model(data) is None
        path = tmp_path / "m.tflite"
        path.write_bytes(data)
        assert check_model(path) is None and check_model(str(path)) is None
    # Things TFLite allows: an absent optional input, a dynamic dimension.
    check_model(edited(fc, lambda m: _set(fz.gq_ops(m)[0], inputs=[0, 1, 2, -1])))
    check_model(edited(fc, lambda m: _set(m.subgraphs[0].tensors[0], shapeSignature=[-1, 70])))


def test_check_model_is_public():
    assert converters.check_model is check_model
    assert "check_model" in converters.__all__ and modelcheck.__all__[0] == "check_model"


# ------------------------------------------- 1. constant graph inputs/outputs


def test_constant_graph_input_is_refused(fc):
    bad = edited(fc, lambda m: _set(m.subgraphs[0], inputs=[2]))
    refused(bad, "subgraph 0, graph input 0", "Expected a tensor without data",
            "Received tensor 2 'Const_1', a constant with 32 bytes of data")


def test_constant_graph_output_is_refused(fc):
    bad = edited(fc, lambda m: _set(m.subgraphs[0], outputs=[int(m.subgraphs[0].outputs[0]), 1]))
    refused(bad, "subgraph 0, graph output 1", "Received tensor 1 'Const', a constant with")


def test_constant_signature_input_is_refused(fc):
    def edit(m):
        m.signatureDefs[0].inputs[0].tensorIndex = 3
    refused(edited(fc, edit), "signature 0 'serving_default', input 'x'", "tensor 3 'Const_2'", "a constant")


# The regression: make_interpreter used to accept this model and the first
# set_tensor on input 0 wrote into the read-only mapped file (SIGSEGV).
CRASH_CASE = """
import sys
import numpy as np
from converters.runtime import make_interpreter
try:
    interpreter = make_interpreter(sys.argv[1])
except ValueError as e:
    print("refused:", e)
    sys.exit(0)
detail = interpreter.get_input_details()[0]
interpreter.set_tensor(detail["index"], np.ones(detail["shape"], detail["dtype"]))
interpreter.invoke()
print("ran")
"""


def test_regression_constant_graph_input_does_not_crash(fc, tmp_path):
    bad = edited(fc, lambda m: _set(m.subgraphs[0], inputs=[2]))  # a centroid table
    path = tmp_path / "joint.tflite"
    path.write_bytes(bad)
    proc = subprocess.run([sys.executable, "-c", CRASH_CASE, str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"died with status {proc.returncode} (negative: a signal)\n{proc.stderr[-2000:]}"
    assert "refused:" in proc.stdout and "graph input 0" in proc.stdout, proc.stdout
    for model in (bad, path):
        with pytest.raises(ValueError, match=r"graph input 0: Expected a tensor without data .* "
                                             r"Received tensor 2 'Const_1', a constant"):
            make_interpreter(model)
    for kind in runtime.RUNTIMES:  # the check comes before either runtime sees the model
        with pytest.raises(ValueError, match="graph input 0"):
            make_interpreter(bad, runtime=kind)


# ------------------------------------------------------ 2. indices in range


@pytest.mark.parametrize("case", ["node_input", "node_input_negative", "node_output_optional", "graph_input",
                                  "graph_output", "intermediate"])
def test_tensor_index_out_of_range(fc, case):
    def edit(m):
        sub, op = m.subgraphs[0], fz.gq_ops(m)[0]
        if case == "node_input":
            op.inputs[3] = 999
        elif case == "node_input_negative":
            op.inputs[3] = -2
        elif case == "node_output_optional":
            op.outputs[0] = -1
        elif case == "graph_input":
            sub.inputs[0] = -1
        elif case == "graph_output":
            sub.outputs[0] = len(sub.tensors)
        else:
            op.intermediates = np.array([len(sub.tensors)], np.int32)

    n = len(flatbuf.read(fc).subgraphs[0].tensors)
    expected = {
        "node_input": ("node 0 (GQ_FULLY_CONNECTED), input 3", f"in 0..{n - 1} or -1 (no tensor)", "index 999"),
        "node_input_negative": ("node 0 (GQ_FULLY_CONNECTED), input 3", "Received index -2"),
        "node_output_optional": ("node 0 (GQ_FULLY_CONNECTED), output 0", f"in 0..{n - 1}.", "index -1"),
        "graph_input": ("subgraph 0, graph input 0", "index -1"),
        "graph_output": ("subgraph 0, graph output 0", f"index {n}"),
        "intermediate": ("node 0 (GQ_FULLY_CONNECTED), intermediate 0", f"index {n}"),
    }[case]
    refused(edited(fc, edit), *expected)


def test_opcode_index_out_of_range(fc):
    refused(edited(fc, lambda m: _set(fz.gq_ops(m)[1], opcodeIndex=7)),
            "subgraph 0, node 1: Expected an opcode index in 0..0. Received opcode index 7.")


def test_tensor_buffer_index_out_of_range(fc):
    def edit(m):
        m.subgraphs[0].tensors[2].buffer = len(m.buffers) + 5
    n = len(flatbuf.read(fc).buffers)
    refused(edited(fc, edit), f"subgraph 0, tensor 2 'Const_1': Expected a buffer index in 0..{n - 1}. "
                              f"Received buffer {n + 5}.")


def test_metadata_buffer_index_out_of_range(fc):
    def edit(m):
        m.metadata[0].buffer = 10**6
    refused(edited(fc, edit), "metadata 0: Expected a buffer index", "Received buffer 1000000")


def test_signature_indices_out_of_range(fc):
    def tensor(m):
        m.signatureDefs[0].outputs[0].tensorIndex = 999

    def subgraph(m):
        m.signatureDefs[0].subgraphIndex = 3

    refused(edited(fc, tensor), "signature 0 'serving_default', output 'y0'", "Received index 999")
    refused(edited(fc, subgraph), "signature 0 'serving_default': Expected a subgraph index in 0..0. "
                                  "Received subgraph 3.")


@pytest.mark.parametrize("field", ["condSubgraphIndex", "bodySubgraphIndex"])
def test_while_subgraph_index_out_of_range(loop, field):
    from ai_edge_litert import schema_py_generated as schema

    def edit(m):
        op = _ops(m, schema.BuiltinOperator.WHILE)[0]
        setattr(op.builtinOptions, field, 3)

    accessor = field[0].upper() + field[1:]
    message = refused(edited(loop, edit), f"(WHILE): Expected WhileOptions.{accessor} in 0..2 (the model's "
                                          "subgraphs). Received subgraph index 3.")
    assert "subgraph 0, node " in message


def test_subgraph_options_table_covers_the_schema():
    """Every options class of the schema with a subgraph accessor is in
    SUBGRAPH_OPTIONS with all such accessors, and is a member of one of the
    two option unions (so the checker finds it by the op's options type)."""
    from ai_edge_litert import schema_py_generated as schema

    unions = set(vars(schema.BuiltinOptions)) | set(vars(schema.BuiltinOptions2))
    found = {}
    for name, cls in vars(schema).items():
        if not inspect.isclass(cls) or name.endswith("T") or name in ("Model", "SignatureDef"):
            continue
        scalars = tuple(m for m in vars(cls) if m == "Subgraph" or m.endswith("SubgraphIndex"))
        vectors = tuple(m for m in vars(cls) if m.endswith("SubgraphIndices"))
        if scalars or vectors:
            found[name] = (scalars, vectors)
    assert found == {k: (tuple(s), tuple(v)) for k, (s, v) in modelcheck.SUBGRAPH_OPTIONS.items()}
    assert set(found) <= unions


def test_type_table_covers_the_schema():
    from ai_edge_litert import schema_py_generated as schema

    names = {k for k in vars(schema.TensorType) if not k.startswith("_")}
    assert set(modelcheck.TYPE_BITS) == names
    assert modelcheck.TYPE_BITS["FLOAT32"] == 32 and modelcheck.TYPE_BITS["INT4"] == 4


def test_unknown_type_is_refused(fc):
    refused(edited(fc, lambda m: _set(m.subgraphs[0].tensors[2], type=99)),
            "tensor 2 'Const_1': Expected a TensorType of the schema. Received type 99.")


def test_gq_table_names_the_ops_the_delegate_runs():
    from converters import tfops

    assert set(modelcheck.GQ_INPUTS) == {tfops.GQ_FC_NAME, tfops.GQ_LSTM_NAME} == set(runtime._OP_VERSIONS)


# ------------------------------------------------------------------ 3. sizes


def test_negative_dimension_is_refused(fc):
    refused(edited(fc, lambda m: _set(m.subgraphs[0].tensors[0], shape=[-1, 70])),
            "subgraph 0, tensor 0 'serving_default_x:0': Expected a shape of dimensions >= 0",
            "Received shape [-1, 70]")
    refused(edited(fc, lambda m: _set(m.subgraphs[0].tensors[0], shapeSignature=[-2, 70])),
            "tensor 0 'serving_default_x:0'", "Received shape_signature [-2, 70]")


def test_size_overflow_is_refused_but_a_large_activation_is_not(fc):
    huge = [2**31 - 1] * 3  # 2**93 floats: no int64 holds the byte size
    refused(edited(fc, lambda m: _set(m.subgraphs[0].tensors[0], shape=huge)),
            "tensor 0 'serving_default_x:0': Expected a size in bytes that fits in int64",
            f"Received shape {huge} of FLOAT32")
    # 16 GiB of activations is not a defect of the file (the runtime may
    # still fail to allocate it, with its own error).
    check_model(edited(fc, lambda m: _set(m.subgraphs[0].tensors[0], shape=[2**31 - 1, 2])))


def test_constant_shorter_than_its_shape_is_refused(fc):
    def edit(m):
        t = m.subgraphs[0].tensors[2]  # centroids, float32 [8]: 32 bytes
        m.buffers[t.buffer].data = m.buffers[t.buffer].data[:31]

    refused(edited(fc, edit), "subgraph 0, tensor 2 'Const_1': Expected buffer",
            "to hold the 32 bytes that shape [8] of FLOAT32 needs. Received 31 bytes: the tensor would exceed "
            "what the file can hold for it.")
    # A constant with more bytes than its shape needs is left to the runtime and the delegate.
    check_model(edited(fc, lambda m: _set(m.subgraphs[0].tensors[2], shape=[7])))


def test_buffer_outside_the_file_is_refused(fc):
    def edit(m):
        b = m.buffers[m.subgraphs[0].tensors[1].buffer]  # the packed weights
        b.data, b.offset, b.size = None, 1 << 20, 432

    refused(edited(fc, edit), "buffer 2: Expected its data (offset 1048576, 432 bytes) within the file",
            "ends at byte 1049008, past the end of the file")


def test_buffer_outside_the_flatbuffer_is_accepted(fc):
    """Models over 2 GB keep buffers after the flatbuffer, at offset/size from
    the start of the file: such a buffer within the file is a constant."""
    model = flatbuf.read(fc)
    b = model.buffers[model.subgraphs[0].tensors[2].buffer]
    payload = bytes(b.data)
    b.data, b.offset, b.size = None, 2, len(payload)  # placeholder offset, fixed below
    base = flatbuf.write(copy.deepcopy(model))
    b.offset = len(base) + 64
    data = flatbuf.write(model)
    data = data + bytes(b.offset - len(data)) + payload
    check_model(data)
    # It counts as a constant: as a graph input it is refused.
    model.subgraphs[0].inputs = np.array([2], np.int32)
    bad = flatbuf.write(model)
    bad = bad + bytes(b.offset - len(bad)) + payload
    refused(bad, "graph input 0", "tensor 2 'Const_1', a constant with 32 bytes of data")


def test_large_custom_options_outside_the_file_are_refused(fc):
    refused(edited(fc, lambda m: _set(fz.gq_ops(m)[0], largeCustomOptionsOffset=1 << 30,
                                      largeCustomOptionsSize=100)),
            "subgraph 0, node 0 (GQ_FULLY_CONNECTED): Expected its custom options (offset 1073741824, 100 bytes)")


# ------------------------------------------------ 4. GQ weights are constants


@pytest.mark.parametrize("slot, role", [(1, "packed weights"), (2, "centroids"), (3, "bias")])
def test_gq_fc_weight_from_a_graph_input_is_refused(fc, slot, role):
    def edit(m):
        fz.gq_ops(m)[0].inputs[slot] = 0  # x

    refused(edited(fc, edit), f"subgraph 0, node 0 (GQ_FULLY_CONNECTED), input {slot} ({role})",
            f"Expected a constant tensor of the model (GQ_FULLY_CONNECTED reads its {role} in place)",
            "Received tensor 0 'serving_default_x:0', a graph input")


def test_gq_fc_weight_from_another_node_is_refused(fc):
    def edit(m):
        first, second = fz.gq_ops(m)
        second.inputs[2] = first.outputs[0]

    refused(edited(fc, edit), "node 1 (GQ_FULLY_CONNECTED), input 2 (centroids)",
            "an output of node 0 (GQ_FULLY_CONNECTED)")


def test_gq_fc_centroids_without_data_are_refused(fc):
    def edit(m):
        m.subgraphs[0].tensors[2].buffer = 0  # nothing writes it either

    refused(edited(fc, edit), "node 0 (GQ_FULLY_CONNECTED), input 2 (centroids)",
            "Received tensor 2 'Const_1', a tensor without data that no node writes")
    # Packed weights without data are the delegate's to report (tests/converters/test_delegate.py).
    check_model(edited(fc, lambda m: _set(m.subgraphs[0].tensors[1], buffer=0)))


def test_gq_fc_required_weight_cannot_be_absent(fc):
    refused(edited(fc, lambda m: _set(fz.gq_ops(m)[0], inputs=[0, 1, -1, 3])),
            "node 0 (GQ_FULLY_CONNECTED), input 2 (centroids)", "Received -1 (no tensor)")


@pytest.mark.parametrize("slot, role, source", [(4, "recurrent centroids", "h"), (5, "bias", "c")])
def test_gq_lstm_weight_from_a_graph_input_is_refused(lstm, slot, role, source):
    sub = flatbuf.read(lstm).subgraphs[0]
    index = next(int(i) for i in sub.inputs if sub.tensors[i].name == f"serving_default_{source}:0".encode())

    def edit(m):
        _ops(m, b"GQ_LSTM")[0].inputs[slot] = index

    refused(edited(lstm, edit), f"node 0 (GQ_LSTM), input {slot} ({role})",
            f"Received tensor {index} 'serving_default_{source}:0', a graph input")


# --------------------------------------------------------- damaged flatbuffers


def test_damaged_flatbuffers_give_a_value_error(fc):
    """Random byte flips and truncations: a ValueError or a pass, never
    another exception or a hang (vector lengths are bounded by the file)."""
    rng = np.random.default_rng(0)
    outcomes = {"ok": 0, "refused": 0}
    start = time.perf_counter()
    for case in range(300):
        raw = bytearray(fc)
        if case % 3 == 0:
            raw = raw[: int(rng.integers(8, len(raw)))]
        else:
            for _ in range(int(rng.integers(1, 6))):
                raw[int(rng.integers(8, len(raw)))] = int(rng.integers(0, 256))
        try:
            check_model(bytes(raw))
            outcomes["ok"] += 1
        except ValueError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100, outcomes
    assert time.perf_counter() - start < 60
    message = refused(fc[: len(fc) // 2], "is not a readable TFLite flatbuffer")
    assert message.startswith(f"Model <{len(fc) // 2} bytes> is not a readable")


def test_a_refused_file_is_unmapped(fc, tmp_path):
    """The map of a refused file is closed cleanly: no view of it survives in
    the error's traceback (closing a map with a live view raises BufferError,
    which would replace the ValueError)."""
    path = tmp_path / "bad.tflite"
    path.write_bytes(edited(fc, lambda m: _set(m.subgraphs[0], inputs=[2])))
    for _ in range(3):
        with pytest.raises(ValueError, match="graph input 0"):
            check_model(path)
        with pytest.raises(ValueError, match="graph input 0"):
            make_interpreter(path)
    with pytest.raises(FileNotFoundError):
        check_model(tmp_path / "missing.tflite")
    with pytest.raises(TypeError):
        check_model(3)


# ------------------------------------------------- delegate from many threads


@pytest.mark.parametrize("num_threads", [1, 2])
def test_interpreters_in_parallel_python_threads(fc, num_threads):
    """4 Python threads, each with its own interpreter (num_threads each) and
    500 invokes, at once: outputs identical to the same inputs run one after
    another by one single-threaded interpreter. The delegate splits an FC by
    whole batch rows (here 2, so num_threads=2 really splits) or 16-row
    output tiles, so every output value is computed the same way whatever
    the thread count: equal means bit-equal."""
    threads, invokes = 4, 500
    rng = np.random.default_rng(num_threads)
    xs = rng.normal(size=(threads, invokes, 2, 70)).astype(np.float32)

    def run(interpreter, inputs):
        x_index = interpreter.get_input_details()[0]["index"]
        outs = [d["index"] for d in interpreter.get_output_details()]
        results = []
        for x in inputs:
            interpreter.set_tensor(x_index, x)
            interpreter.invoke()
            results.append([interpreter.get_tensor(i).copy() for i in outs])
        return results

    reference = make_interpreter(fc, num_threads=1)
    expected = [run(reference, xs[t]) for t in range(threads)]
    interpreters = [make_interpreter(fc, num_threads=num_threads) for _ in range(threads)]
    got, errors = [None] * threads, []
    barrier = threading.Barrier(threads)

    def worker(t):
        try:
            barrier.wait()
            got[t] = run(interpreters[t], xs[t])
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=300)
    assert not errors, errors
    for t in range(threads):
        for k in range(invokes):
            for a, b in zip(got[t][k], expected[t][k]):
                np.testing.assert_array_equal(a, b)


def test_check_time_is_small(fc, lstm):
    """Reading in place: a small model is checked in milliseconds."""
    start = time.perf_counter()
    for _ in range(20):
        check_model(fc)
        check_model(lstm)
    assert (time.perf_counter() - start) / 40 < 0.05


def test_names_the_runtime_decodes_must_be_utf8(tmp_path):
    """Found by tests/support/fuzz_entry.py: a byte edit in a tensor name made LiteRT's get_tensor_details raise
    UnicodeDecodeError from inside the runtime's Python API."""
    import tensorflow as tf

    from converters import flatbuf

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
    def f(x):
        return {"y": x * 2.0}

    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    model = flatbuf.read(conv.convert())
    model.subgraphs[0].tensors[0].name = b"bad\xffname"
    data = bytes(flatbuf.write(model))
    with pytest.raises(ValueError, match=r"subgraph 0, tensor 0: Expected a UTF-8 tensor name"):
        check_model(data)


# ----------------------------------------- builtin ops' inputs and outputs


@pytest.fixture(scope="module")
def shapes():
    """A float graph with the builtin ops the fuzzing crashed TFLite with: TRANSPOSE,
    STRIDED_SLICE and SPLIT (x [1, 4, 6] -> transpose -> slice -> split in 2 -> add)."""
    from gq_tf._keras import tf

    @tf.function(input_signature=[tf.TensorSpec([1, 4, 6], tf.float32)])
    def f(x):
        y = tf.transpose(x, [0, 2, 1])[:, 1:5, :]
        a, b = tf.split(y, 2, axis=2)
        return a + b

    converter = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    data = converter.convert()
    model = flatbuf.read(data)
    schema = flatbuf.schema.BuiltinOperator
    for op in (schema.TRANSPOSE, schema.STRIDED_SLICE, schema.SPLIT):
        assert len(_ops(model, op)) == 1, op
    return data


def test_builtin_ops_with_the_inputs_their_kernels_read_pass(shapes):
    assert check_model(shapes) is None
    interpreter = make_interpreter(shapes)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.ones([1, 4, 6], np.float32))
    interpreter.invoke()


def test_a_required_input_that_is_absent_is_refused(shapes):
    """The fuzzing's TRANSPOSE whose input 0 was -1: TFLite crashed in allocate_tensors."""
    def edit(m):
        op = _ops(m, flatbuf.schema.BuiltinOperator.TRANSPOSE)[0]
        op.inputs[0] = -1

    data = edited(shapes, edit)
    refused(data, "(TRANSPOSE), input 0: Expected a tensor (TRANSPOSE requires input 0). Received -1 (no tensor).")
    with pytest.raises(ValueError, match="TRANSPOSE requires input 0"):
        make_interpreter(data)


def test_too_few_inputs_are_refused(shapes):
    """The fuzzing's STRIDED_SLICE with 2 of its 4 inputs."""
    def edit(m):
        op = _ops(m, flatbuf.schema.BuiltinOperator.STRIDED_SLICE)[0]
        op.inputs = op.inputs[:2]

    refused(edited(shapes, edit), "(STRIDED_SLICE): Expected 4 inputs (STRIDED_SLICE). Received 2 inputs.")


def test_a_split_count_that_disagrees_with_the_outputs_is_refused(shapes):
    """The fuzzing's SPLIT of 32772 pieces with 4 outputs (here 2)."""
    def edit(m):
        _ops(m, flatbuf.schema.BuiltinOperator.SPLIT)[0].builtinOptions.numSplits = 32772

    refused(edited(shapes, edit), "(SPLIT): Expected SplitOptions.NumSplits equal to the node's number of outputs "
            "(2). Received 32772.")


def test_a_custom_op_named_like_a_builtin_is_not_held_to_its_arity(fc):
    def edit(m):
        code = next(c for c in m.operatorCodes if c.customCode == b"GQ_FULLY_CONNECTED")
        code.customCode = b"TRANSPOSE"  # 3 or 4 inputs; TRANSPOSE would need 2

    message = str(pytest.raises((ValueError, RuntimeError), make_interpreter, edited(fc, edit)).value)
    assert "Expected 2 inputs" not in message  # the runtime's error: no registration for the custom op


@pytest.mark.parametrize("model_name", ["rnnt_tiny", "conformer_tiny"])
def test_the_arity_table_covers_every_builtin_op_of_our_exports(model_name, tmp_path):
    """Every builtin op the streaming exports use (float, int8, GQ) is checked."""
    from gq_speech import deploy, models

    cfg = models.load_config(model_name)
    net = models.build_training_model(cfg)
    names = {v: k for k, v in vars(flatbuf.schema.BuiltinOperator).items() if not k.startswith("_")}
    used = set()
    for kind, model in (("float", net), ("int8", net), ("gq", gq_tf.quantize_model(net, {".*": 4}))):
        export = deploy.export_streaming(model, cfg, tmp_path / kind, kind=kind)
        for path in (p for p in export.paths.values() if str(p).endswith(".tflite")):
            m = flatbuf.read(Path(path).read_bytes())
            for op in m.subgraphs[0].operators:
                code = m.operatorCodes[op.opcodeIndex]
                builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
                if builtin != 32:
                    used.add(names[builtin])
    assert used and not used - set(modelcheck.BUILTIN_ARITY), sorted(used - set(modelcheck.BUILTIN_ARITY))
