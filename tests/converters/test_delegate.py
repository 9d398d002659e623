"""The GQ delegate (``libgq_delegate.so``) in LiteRT and tf.lite.

Models are converted by TensorFlow from ``converters.tfops.gq_fully_connected``
(one CUSTOM op per layer) and run through ``converters.runtime.make_interpreter``;
outputs are compared with ``gq_tf.reference.fully_connected`` (float64).

Tolerance. The model holds x, the centroids and the bias as float32, and the
reference takes exactly those values, so the only difference is the kernel's
float32 arithmetic: each term x_i * w_i has one rounding for the product and at
most ``in + 1`` roundings of additions on its way to y (whatever the summation
order), so ``|y - y_exact| <= gamma(in + 2) * (sum_i |x_i w_i| + |bias|)`` with
``gamma(n) = n u / (1 - n u)``, ``u = 2**-24`` (the standard bound for a
floating-point dot product); the fused activations are clamps, 1-Lipschitz, so
the bound survives them. It is rigorous, hence never flaky, and far below the
error of one wrong weight index (a whole term).

Malformed models are made by editing the flatbuffer (``tests/support/fuzz_delegate.py``
has the helpers); each must give a RuntimeError that names the problem.
"""

import platform
import re
import subprocess

import numpy as np
import pytest

import gq_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from converters import flatbuf, layout, runtime
from converters.runtime import delegate_path, make_interpreter
from gq_tf import reference
from tests.support import fuzz_delegate as fz

RUNTIMES = ("litert", "tflite")
ACTS = fz.ACTIVATIONS
U = 2.0**-24

# name -> (x shape, layers (bits, out, bias, activation)). Across the first two
# models every bit depth meets every (activation, bias) pair at least once.
MODELS = {
    "rank3_in70": ([2, 3, 70], [(b, o, b % 2 == 1, ACTS[b % 4])
                                for b, o in zip(range(1, 9), (5, 17, 1, 64, 3, 9, 33, 2))]),
    "rank2_in130": ([4, 130], [(b, o, b % 2 == 1, ACTS[(b + 1) % 4])
                               for b, o in zip(range(1, 9), (7, 2, 65, 4, 1, 12, 3, 8))]),
    "rank1_in64": ([64], [(2, 6, True, "NONE"), (7, 3, False, "RELU6")]),
}


@pytest.fixture(scope="module")
def models():
    return {name: fz.build_gq_model(shape, layers, seed=i)
            for i, (name, (shape, layers)) in enumerate(MODELS.items())}


@pytest.fixture(scope="module")
def small():
    """One op: x [2, 70], bits 3, out 9, bias, RELU; tensor 0 is x."""
    data, truth = fz.build_gq_model([2, 70], [(3, 9, True, "RELU")], seed=7)
    model = flatbuf.read(data)
    op = fz.gq_ops(model)[0]
    assert int(op.inputs[0]) == 0 and len(op.inputs) == 4
    return data, truth


@pytest.fixture(scope="module")
def small_model(small):
    return small[0]


def _gamma(n):
    return n * U / (1 - n * U)


def _check_outputs(outputs, truth, x, qd8=True):
    """Outputs against the NumPy truth: the qd8 model (int8 arithmetic of the
    fast kernels, 2 ulp) when ``qd8``, else exact float math (reference kernel)."""
    assert sorted(outputs) == sorted(truth)
    for name, t in truth.items():
        y = outputs[name]
        if qd8:
            want, tol, _ = reference.fully_connected_qd8(x, t["indices"], t["centroids"], t["bias"], t["activation"])
            assert y.dtype == np.float32 and y.shape == want.shape, name
            err = np.abs(y.astype(np.float64) - want)
            assert np.all(err <= tol), (name, t["bits"], float(np.max(err - tol)))
            continue
        want = reference.fully_connected(x, t["indices"], t["centroids"], t["bias"], t["activation"])
        assert y.dtype == np.float32 and y.shape == want.shape, name
        w = np.abs(t["centroids"].astype(np.float64)[t["indices"]])
        scale = np.abs(x.astype(np.float64)) @ w.T
        if t["bias"] is not None:
            scale = scale + np.abs(t["bias"])
        tol = _gamma(x.shape[-1] + 2) * scale
        err = np.abs(y.astype(np.float64) - want)
        assert np.all(err <= tol), (name, t["bits"], float(np.max(err - tol)))


def _x(shape, seed=0):
    return (np.random.default_rng(seed).normal(size=shape) * 0.3).astype(np.float32)


# ------------------------------------------------------------ numerics


@pytest.mark.parametrize("runtime_name", RUNTIMES)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_matches_reference(models, model_name, runtime_name):
    data, truth = models[model_name]
    interpreter = make_interpreter(data, runtime=runtime_name)
    x = _x(MODELS[model_name][0])
    _check_outputs(interpreter.get_signature_runner()(x=x), truth, x)


@pytest.mark.parametrize("runtime_name", RUNTIMES)
def test_model_path_kernel_and_threads(models, tmp_path, runtime_name):
    data, truth = models["rank2_in130"]
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    interpreter = make_interpreter(path, runtime=runtime_name, kernel="reference", num_threads=2)
    x = _x([4, 130], seed=3)
    _check_outputs(interpreter.get_signature_runner()(x=x), truth, x, qd8=False)


@pytest.mark.parametrize("kernel", [k.name for k in runtime.kernels() if k.supported])
def test_every_kernel_variant_through_the_delegate(models, kernel):
    data, truth = models["rank2_in130"]
    x = _x([4, 130], seed=6)
    qd8 = next(k.qd8 for k in runtime.kernels() if k.name == kernel)
    _check_outputs(make_interpreter(data, kernel=kernel).get_signature_runner()(x=x), truth, x, qd8=qd8)


@pytest.mark.parametrize("shape", [[1, 2048], [3, 2048]])
def test_threads_split_large_calls_identically(shape):
    """A call of >= 4M multiply-adds is split over the interpreter's threads
    (output rows at batch 1, batch rows otherwise); every part runs the same
    integer arithmetic, so the results equal one thread's bit for bit."""
    data, truth = fz.build_gq_model(shape, [(4, 2048, True, "NONE"), (3, 40, False, "RELU")], seed=7)
    x = _x(shape, seed=8)
    one = make_interpreter(data, num_threads=1).get_signature_runner()(x=x)
    two = make_interpreter(data, num_threads=2).get_signature_runner()(x=x)
    for name in one:
        np.testing.assert_array_equal(one[name], two[name])
    _check_outputs(two, truth, x)


@pytest.mark.parametrize("runtime_name", RUNTIMES)
def test_resize_input_resizes_output(models, runtime_name):
    """Prepare runs again after a resize and gives the output x's new leading dims."""
    data, truth = models["rank3_in70"]
    runner = make_interpreter(data, runtime=runtime_name).get_signature_runner()
    for shape in ([5, 1, 70], [1, 4, 70], [0, 3, 70]):
        x = _x(shape, seed=4)
        _check_outputs(runner(x=x), truth, x)


def test_abi_same_bits_in_both_runtimes(models):
    """The ABI structs are read alike by both runtimes: bit-identical outputs
    (same kernel), including tensors at high indices (up to ~30 here)."""
    data, _ = models["rank3_in70"]
    x = _x([2, 3, 70], seed=5)
    outs = [make_interpreter(data, runtime=r).get_signature_runner()(x=x) for r in RUNTIMES]
    for name in outs[0]:
        np.testing.assert_array_equal(outs[0][name], outs[1][name])


def test_without_delegate_the_op_is_unresolved(small_model):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=small_model)
    with pytest.raises(RuntimeError, match="Encountered unresolved custom op: GQ_FULLY_CONNECTED"):
        interpreter.allocate_tensors()


# ------------------------------------------------------ API and options


# A variant compiled only for the other architecture: unknown here.
OTHER_ARCH_KERNEL = "neon" if platform.machine() == "x86_64" else "avx2"


@pytest.mark.parametrize("runtime_name", RUNTIMES)
@pytest.mark.parametrize("options, message", [
    ({"kernel": "fast"}, "expected option kernel in 'auto', 'reference', 'scalar'"),
    ({"kernel": OTHER_ARCH_KERNEL}, f"received '{OTHER_ARCH_KERNEL}'"),
    ({"threads": "2"}, "unknown option 'threads' (known options: kernel)"),
])
def test_bad_delegate_options_are_rejected(runtime_name, options, message):
    if runtime_name == "litert":
        from ai_edge_litert.interpreter import load_delegate
    else:
        from gq_tf._keras import tf

        load_delegate = tf.lite.experimental.load_delegate
    with pytest.raises(ValueError, match=re.escape(message)):
        load_delegate(delegate_path(), options)


def test_good_delegate_options_load():
    from ai_edge_litert.interpreter import load_delegate

    names = [k.name for k in runtime.kernels() if k.supported]
    assert {"reference", "scalar"} <= set(names) and runtime.auto_kernel() in names
    for kernel in ["auto", *names]:
        assert load_delegate(delegate_path(), {"kernel": kernel}) is not None


def test_make_interpreter_argument_errors(small_model, tmp_path):
    with pytest.raises(ValueError, match="Expected runtime in"):
        make_interpreter(small_model, runtime="tensorflow")
    with pytest.raises(ValueError, match="Expected kernel in"):
        make_interpreter(small_model, kernel="sse9")
    with pytest.raises(ValueError, match="num_threads"):
        make_interpreter(small_model, num_threads=0)
    with pytest.raises(FileNotFoundError, match="not found"):
        make_interpreter(tmp_path / "missing.tflite")
    with pytest.raises(ValueError, match="Expected the bytes of a TFLite model"):
        make_interpreter(b"not a model at all")
    (tmp_path / "text.tflite").write_text("hello world, not a flatbuffer")
    with pytest.raises(ValueError, match="Expected a TFLite model file"):
        make_interpreter(tmp_path / "text.tflite")
    with pytest.raises(ValueError, match="could not load model"):
        make_interpreter(b"\x00\x00\x00\x00TFL3" + bytes(40))
    with pytest.raises(TypeError, match="model path"):
        make_interpreter(12)


def test_delegate_path_missing_says_how_to_build(monkeypatch):
    assert delegate_path().endswith("converters/libgq_delegate.so")
    monkeypatch.setattr(runtime, "_LIBRARY", "libgq_missing.so")
    with pytest.raises(FileNotFoundError, match=re.escape("pip install -e .")):
        delegate_path()


def test_library_exports_only_its_api():
    out = subprocess.run(["nm", "-D", "--defined-only", delegate_path()], capture_output=True,
                         text=True, check=True).stdout
    symbols = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert symbols == {
        "tflite_plugin_create_delegate",
        "tflite_plugin_destroy_delegate",
        "gq_fc_row_bytes",
        "gq_fc_packed_size",
        "gq_f32_fc_ukernel__ref",
        "gq_fc_codebook_init",
        "gq_fc_workspace_size",
        "gq_fc_kernel_count",
        "gq_fc_kernel_at",
        "gq_fc_kernel_supported",
        "gq_fc_kernel_find",
        "gq_fc_run",
        "gq_lstm_cell",
    }


# ------------------------------------------------------ malformed models


PACKED = layout.packed_size(3, 70, 9)  # 2 blocks * 24 bytes * 9 rows = 432


def _x_shape(shape):
    def edit(model, op):
        t = fz.tensor(model, int(op.inputs[0]))
        t.shape, t.shapeSignature = np.array(shape, np.int32), None
    return edit


def _raw_options(raw):
    def edit(model, op):
        fz.set_option_bytes(op, raw)
    return edit


def _reads_own_output(model, op):
    op.inputs = np.array(list(op.inputs[:3]) + [int(op.outputs[0])], np.int32)


def _non_constant_packed(model, op):
    fz.tensor(model, int(op.inputs[1])).buffer = 0


MALFORMED = {
    "bits_out_of_range": (fz.edit_options(bits=9), r"expected option bits in 1\.\.8, received bits=9"),
    "bits_zero": (fz.edit_options(bits=0), r"expected option bits in 1\.\.8, received bits=0"),
    "bits_inconsistent": (fz.edit_options(bits=4), (rf"expected packed weights of {layout.packed_size(4, 70, 9)} "
                          rf"bytes for bits=4, in_features=70, out_features=9 .*received {PACKED} bytes")),
    "bits_not_int": (fz.edit_options(bits="3"), r"expected option 'bits' to be an integer"),
    "unknown_key": (fz.edit_options(scale=1), r"unknown option key 'scale' \(expected exactly the keys"),
    "missing_key": (fz.edit_options(block_size=fz.DROP), r"missing option 'block_size'"),
    "options_version_2": (fz.edit_options(version=2), r"expected option version 1, received version=2"),
    "op_version_2": (fz.opcode_version(2), r"custom op GQ_FULLY_CONNECTED has version 2"),
    "block_size": (fz.edit_options(block_size=32), r"expected option block_size=64 .*received block_size=32"),
    "activation": (fz.edit_options(fused_activation="TANH"),
                   r"expected option fused_activation in NONE, RELU, RELU_N1_TO_1, RELU6, received 'TANH'"),
    "in_features_zero": (fz.edit_options(in_features=0), r"expected option in_features in 1\.\.2147483647"),
    "out_features_huge": (fz.edit_options(out_features=2**40), r"expected option out_features in 1\.\.2147483647"),
    "options_garbage": (_raw_options(b"\x07garbage\x01\x02"),
                        r"expected custom options to be a flexbuffer map, received 10 bytes"),
    "options_missing": (_raw_options(b""), r"expected custom options .* received none"),
    "packed_truncated": (fz.resize_const(1, PACKED - 1),
                         rf"expected packed weights of {PACKED} bytes .*received {PACKED - 1} bytes"),
    "packed_extended": (fz.resize_const(1, PACKED + 64),
                        rf"expected packed weights of {PACKED} bytes .*received {PACKED + 64} bytes"),
    "packed_wrong_type": (fz.set_type(1, 9), r"expected input 1 \(packed\) of type UINT8, received INT8"),
    "packed_not_constant": (_non_constant_packed, r"expected packed weights to be a constant"),
    "centroids_length": (fz.resize_const(2, 16 * 4), (r"expected centroids of shape \[8\] \(2\*\*bits, "
                                                    r"bits=3\), received \[16\]")),
    "x_wrong_type": (fz.set_type(0, 9), r"expected input 0 \(x\) of type FLOAT32, received INT8"),
    "x_wrong_last_dim": (_x_shape([2, 71]), (r"expected x of shape \[\.\.\., 70\] \(in_features\), "
                                             r"received \[2, 71\]")),
    "bias_length": (fz.resize_const(3, 8 * 4), (r"expected bias of shape \[9\] \(out_features\), "
                                              r"received \[8\]")),
    "two_inputs": (fz.edit_inputs(lambda i: i[:2]), r"expected 3 or 4 inputs .*received 2"),
    "five_inputs": (fz.edit_inputs(lambda i: i + [i[1]]), r"expected 3 or 4 inputs .*received 5"),
    "reads_own_output": (_reads_own_output, (r"input 3 \(tensor 4\) is written by node 0, which does "
                                             r"not run before it: the graph has a cycle")),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_model_is_rejected_with_a_clear_error(small_model, case):
    edit, pattern = MALFORMED[case]
    data = fz.edited(small_model, edit)
    with pytest.raises(RuntimeError) as info:
        make_interpreter(data)
    message = str(info.value)
    assert re.search(pattern, message), message
    assert f"<{len(data)} bytes>" in message  # the model is named
    if case != "op_version_2":
        assert "GQ_FULLY_CONNECTED (node 0): " in message  # and the node


@pytest.mark.parametrize("case", ["bits_out_of_range", "x_wrong_type", "packed_truncated",
                                  "reads_own_output"])
def test_malformed_model_in_tf_lite(small_model, case):
    edit, pattern = MALFORMED[case]
    with pytest.raises(RuntimeError, match=pattern):
        make_interpreter(fz.edited(small_model, edit), runtime="tflite")


def test_inconsistent_models_are_refused_before_the_runtime(small_model):
    """Some defects never reach the delegate: the model checks
    (converters.modelcheck) refuse them before the runtime reads the model."""
    def short_buffer(model, op):  # a packed buffer shorter than its own shape
        fz.set_buffer(model, int(op.inputs[1]), bytes(PACKED - 1), fix_shape=False)

    with pytest.raises(ValueError, match=rf"tensor 1 'Const': Expected buffer \d+ to hold the {PACKED} bytes "
                                         rf".*Received {PACKED - 1} bytes"):
        make_interpreter(fz.edited(small_model, short_buffer))
    with pytest.raises(ValueError, match=r"node 0 \(GQ_FULLY_CONNECTED\), input 3: Expected a tensor index in "
                                         r"0\.\.\d+ or -1 \(no tensor\)\. Received index 999\."):
        make_interpreter(fz.edited(small_model, fz.edit_inputs(lambda i: i[:3] + [999])))


def test_a_valid_edit_still_runs(small_model):
    """The edit helpers themselves keep a model valid: x batch 2 -> 3."""
    interpreter = make_interpreter(fz.edited(small_model, _x_shape([3, 70])))
    assert list(interpreter.get_output_details()[0]["shape"]) == [3, 9]
    interpreter.invoke()


def test_omitted_optional_bias_runs_without_bias(small):
    """Input 3 given as -1 (TFLite's "no tensor") means no bias."""
    data, truth = small
    interpreter = make_interpreter(fz.edited(data, fz.edit_inputs(lambda i: i[:3] + [-1])))
    x = _x([2, 70], seed=6)
    out = interpreter.get_signature_runner()(x=x)
    _check_outputs(out, {"y0": dict(truth["y0"], bias=None)}, x)
