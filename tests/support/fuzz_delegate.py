"""Fuzzing the GQ delegate with mutated .tflite files.

Each case is a small GQ model (converted by TensorFlow once, at the start)
with one to three random edits to a ``GQ_FULLY_CONNECTED`` op: its custom
option bytes (byte flips, truncation, extension, random bytes), option values
and types, the shapes, types and buffers of its inputs, the input list, and
its opcode name and version. Edits stay on the GQ op: stock TFLite kernels
are not ours to fuzz.

The cases run through ``converters.runtime.make_interpreter`` and ``invoke``
in worker subprocesses, many cases per process, each case announced on stdout
before it starts: a worker that dies (segfault, abort, sanitizer report)
names the case that killed it, which is counted as a crash, and a new worker
continues after it. Every case is reproducible from (seed, case number).

Long run, from the repository root:

    python -m tests.support.fuzz_delegate --cases 10000 [--jobs 2] [--seed 0]
        [--asan] [--crash-dir DIR]

prints the number of cases, cleanly reported errors, successes and crashes.
``tests/converters/test_fuzz_delegate.py`` runs a few hundred cases in CI, plus a smaller
batch against a delegate built with AddressSanitizer + UBSan.

This module imports TensorFlow only to build the base models (parent side);
the workers import LiteRT only.
"""

import argparse
import collections
import concurrent.futures
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from converters import flatbuf

ROOT = Path(__file__).resolve().parents[2]
GQ_FC = b"GQ_FULLY_CONNECTED"
ACTIVATIONS = ("NONE", "RELU", "RELU_N1_TO_1", "RELU6")

# ------------------------------------------------------------------ models


def build_gq_model(x_shape, layers, seed=0):
    """Converts a model of GQ_FULLY_CONNECTED ops that all read one input ``x``.

    Args:
      x_shape: static shape of ``x``; its last entry is ``in_features``.
      layers: list of ``(bits, out_features, with_bias, activation)``.
      seed: seed of the random indices, centroids, biases.

    Returns:
      ``(tflite_bytes, truth)``: ``truth`` maps the signature output name
      (``"y0"``, ``"y1"``...) to a dict with ``bits``, ``indices``,
      ``centroids``, ``bias`` (or None) and ``activation``.
    """
    import gq_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
    from converters import layout, tfops
    from gq_tf._keras import tf

    rng = np.random.default_rng(seed)
    in_f = int(x_shape[-1])
    truth = {}
    for i, (bits, out_f, with_bias, activation) in enumerate(layers):
        truth[f"y{i}"] = {
            "bits": bits,
            "indices": rng.integers(0, 2**bits, (out_f, in_f)),
            "centroids": rng.normal(size=2**bits).astype(np.float32),
            "bias": rng.normal(size=out_f).astype(np.float32) if with_bias else None,
            "activation": activation,
        }

    class _Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec(list(x_shape), tf.float32)])
        def f(self, x):
            outs = {}
            for name, t in truth.items():
                outs[name] = tfops.gq_fully_connected(
                    x,
                    tf.constant(layout.pack(t["indices"], t["bits"])),
                    tf.constant(t["centroids"]),
                    None if t["bias"] is None else tf.constant(t["bias"]),
                    bits=t["bits"],
                    in_features=in_f,
                    out_features=t["indices"].shape[0],
                    activation=t["activation"],
                )
            return outs

    module = _Model()
    fn = module.f.get_concrete_function()
    data = tf.lite.TFLiteConverter.from_concrete_functions([fn], module).convert()
    return data, truth


def base_models():
    """The fuzz corpus: three small models covering rank 1..3, bias or not."""
    return [
        build_gq_model([2, 70], [(3, 9, True, "RELU"), (8, 5, False, "NONE")], seed=1)[0],
        build_gq_model([1, 3, 130], [(1, 33, True, "RELU6"), (5, 4, False, "RELU_N1_TO_1")],
                       seed=2)[0],
        build_gq_model([64], [(2, 7, True, "NONE"), (7, 3, True, "RELU")], seed=3)[0],
    ]


# -------------------------------------------------------- flatbuffer edits


# Reading and writing ModelT objects: converters.flatbuf.read / write.


def gq_ops(model):
    """The GQ_FULLY_CONNECTED operators of subgraph 0 (ModelT objects)."""
    codes = {i for i, c in enumerate(model.operatorCodes) if c.customCode == GQ_FC}
    return [op for op in model.subgraphs[0].operators if op.opcodeIndex in codes]


def get_options(op):
    """Decoded custom options of an op (a dict)."""
    from flatbuffers import flexbuffers

    return flexbuffers.Loads(bytes(op.customOptions))


def set_options(op, options):
    """Replaces an op's custom options by the flexbuffer of ``options``."""
    from flatbuffers import flexbuffers

    op.customOptions = np.frombuffer(bytes(flexbuffers.Dumps(options)), np.uint8).copy()


def set_option_bytes(op, raw):
    op.customOptions = None if len(raw) == 0 else np.frombuffer(bytes(raw), np.uint8).copy()


def tensor(model, index):
    return model.subgraphs[0].tensors[index]


def buffer_of(model, index):
    return model.buffers[tensor(model, index).buffer]


def set_buffer(model, index, raw, *, fix_shape):
    """Replaces a constant's bytes; ``fix_shape`` makes its shape 1-D and consistent."""
    t = tensor(model, index)
    model.buffers[t.buffer].data = np.frombuffer(bytes(raw), np.uint8).copy()
    if fix_shape:
        item = 1 if t.type in (3, 9) else 4  # UINT8, INT8 vs 4-byte types
        t.shape = np.array([len(raw) // item], np.int32)
        t.shapeSignature = None


# ------------------------------------------------------------- mutations

_INT_POOL = (-(2**63), -(2**31), -1, 0, 1, 2, 3, 4, 7, 8, 9, 63, 64, 65, 255, 256,
             2**31 - 1, 2**31, 2**32 + 1, 2**62, 2**63 - 1)
_DIM_POOL = (-2, -1, 0, 1, 2, 3, 5, 63, 64, 65, 70, 129, 130, 131, 255, 256, 1000, 2**31 - 1)
_SMALL_DIM_POOL = (-1, 0, 1, 2, 3, 4, 7, 64, 69, 70, 71, 130, 200)
_WEIRD_VALUES = (3.0, "4", True, False, [4], {"a": 1}, None, "", "RELU", b"\x00\x01", -1.5)


# Targeted edits for the malformed-model tests: each returns edit(model, op).

DROP = object()  # edit_options(key=DROP) removes the key


def edit_options(**changes):
    def edit(model, op):
        opts = get_options(op)
        for k, v in changes.items():
            if v is DROP:
                del opts[k]
            else:
                opts[k] = v
        set_options(op, opts)
    return edit


def edit_inputs(fn):
    def edit(model, op):
        op.inputs = np.array(fn([int(i) for i in op.inputs]), np.int32)
    return edit


def edit_outputs(fn):
    def edit(model, op):
        op.outputs = np.array(fn([int(i) for i in op.outputs]), np.int32)
    return edit


def set_type(slot, code):
    def edit(model, op):
        tensor(model, int(op.inputs[slot])).type = code
    return edit


def resize_const(slot, nbytes):
    def edit(model, op):
        raw = bytes(buffer_of(model, int(op.inputs[slot])).data)
        raw = raw[:nbytes] if nbytes <= len(raw) else raw + bytes(nbytes - len(raw))
        set_buffer(model, int(op.inputs[slot]), raw, fix_shape=True)
    return edit


def opcode_version(v):
    def edit(model, op):
        model.operatorCodes[op.opcodeIndex].version = v
    return edit


def edited(data, edit, ops=None):
    """``data`` with ``edit`` applied to the first op ``ops(model)`` returns
    (default: the first GQ_FULLY_CONNECTED)."""
    from converters import flatbuf

    model = flatbuf.read(data)
    edit(model, (ops or gq_ops)(model)[0])
    return flatbuf.write(model)


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _op_input(rng, op):
    if op.inputs is None or len(op.inputs) == 0:
        return None
    return int(op.inputs[int(rng.integers(len(op.inputs)))])


def _m_opt_flip(rng, model, op):
    raw = bytearray(bytes(op.customOptions) if op.customOptions is not None else b"")
    if not raw:
        return "flip (empty)"
    for _ in range(int(rng.integers(1, 5))):
        raw[int(rng.integers(len(raw)))] ^= int(rng.integers(1, 256))
    set_option_bytes(op, raw)
    return "options: byte flips"


def _m_opt_truncate(rng, model, op):
    raw = bytes(op.customOptions) if op.customOptions is not None else b""
    keep = int(rng.integers(0, max(len(raw), 1)))
    set_option_bytes(op, raw[:keep] if rng.random() < 0.7 else raw[len(raw) - keep:])
    return f"options: truncated to {keep} bytes"


def _m_opt_extend(rng, model, op):
    raw = bytes(op.customOptions) if op.customOptions is not None else b""
    extra = rng.integers(0, 256, int(rng.integers(1, 17))).astype(np.uint8).tobytes()
    set_option_bytes(op, raw + extra if rng.random() < 0.5 else extra + raw)
    return f"options: {len(extra)} random bytes added"


def _m_opt_random(rng, model, op):
    set_option_bytes(op, rng.integers(0, 256, int(rng.integers(0, 200))).astype(np.uint8).tobytes())
    return "options: random bytes"


def _m_opt_value(rng, model, op):
    try:
        opts = get_options(op)
    except Exception:  # noqa: BLE001  (already garbage: nothing to re-encode)
        return "option value (undecodable)"
    if not isinstance(opts, dict) or not opts:
        return "option value (not a map)"
    key = _pick(rng, sorted(opts))
    r = rng.random()
    if r < 0.6:
        value = int(_pick(rng, _INT_POOL)) if key != "fused_activation" else _pick(
            rng, ACTIVATIONS + ("TANH", "relu", "", "RELU\x00", "RELU6X", "A" * 300))
    else:
        value = _pick(rng, _WEIRD_VALUES)
    opts[key] = value
    try:
        set_options(op, opts)
    except Exception:  # noqa: BLE001  (flexbuffers cannot encode it, e.g. out of range)
        return f"option {key} (unencodable)"
    return f"option {key}={value!r}"


def _m_opt_keys(rng, model, op):
    try:
        opts = get_options(op)
    except Exception:  # noqa: BLE001  (already garbage)
        return "option keys (undecodable)"
    if not isinstance(opts, dict):
        return "option keys (not a map)"
    r = rng.random()
    if r < 0.4 and opts:
        key = _pick(rng, sorted(opts))
        del opts[key]
        what = f"drop {key}"
    elif r < 0.8:
        key = _pick(rng, ("scale", "bit", "Bits", "layout", "version2", "", "x" * 200))
        opts[key] = 1
        what = f"add {key!r}"
    else:
        opts = {}
        what = "empty map"
    set_options(op, opts)
    return f"option keys: {what}"


def _m_tensor_type(rng, model, op):
    i = _op_input(rng, op)
    if i is None or not 0 <= i < len(model.subgraphs[0].tensors):
        return "tensor type (no input)"
    tensor(model, i).type = int(rng.integers(0, 18))
    return f"tensor {i} type -> {tensor(model, i).type}"


def _m_tensor_shape(rng, model, op):
    i = _op_input(rng, op)
    if i is None or not 0 <= i < len(model.subgraphs[0].tensors):
        return "tensor shape (no input)"
    t = tensor(model, i)
    is_const = buffer_of(model, i).data is not None
    pool = _DIM_POOL if is_const else _SMALL_DIM_POOL  # no huge activations: stock arena
    shape = [int(d) for d in (t.shape if t.shape is not None else [])]
    r = rng.random()
    if r < 0.5 and shape:
        shape[int(rng.integers(len(shape)))] = int(_pick(rng, pool))
    elif r < 0.7:
        shape.insert(int(rng.integers(len(shape) + 1)), int(_pick(rng, (1, 2, 3))))
    elif r < 0.9 and shape:
        del shape[int(rng.integers(len(shape)))]
    else:
        shape = []
    t.shape = np.array(shape, np.int32)
    t.shapeSignature = None
    return f"tensor {i} shape -> {shape}"


def _m_x_batch(rng, model, op):
    """Consistent change of x's leading dims: must still run."""
    if op.inputs is None or len(op.inputs) == 0:
        return "x batch (no inputs)"
    i = int(op.inputs[0])
    if not 0 <= i < len(model.subgraphs[0].tensors):
        return "x batch (bad x)"
    t = tensor(model, i)
    shape = [int(d) for d in t.shape]
    for k in range(len(shape) - 1):
        shape[k] = int(rng.integers(0, 5))
    t.shape = np.array(shape, np.int32)
    t.shapeSignature = None
    return f"x shape -> {shape}"


def _m_buffer(rng, model, op):
    consts = [int(i) for i in (op.inputs if op.inputs is not None else [])[1:]
              if 0 <= i < len(model.subgraphs[0].tensors) and buffer_of(model, int(i)).data is not None]
    if not consts:
        return "buffer (no constant input)"
    i = _pick(rng, consts)
    raw = bytes(buffer_of(model, i).data)
    r = rng.random()
    if r < 0.35:
        new = raw[: int(rng.integers(0, max(len(raw), 1)))]
    elif r < 0.7:
        new = raw + rng.integers(0, 256, int(rng.integers(1, 130))).astype(np.uint8).tobytes()
    elif r < 0.85:
        new = raw[:-4] if len(raw) >= 4 else b""
    else:
        # The tensor loses its data: no longer a constant.
        tensor(model, i).buffer = 0
        return f"tensor {i} made non-constant"
    fix = rng.random() < 0.7
    set_buffer(model, i, new, fix_shape=fix)
    return f"tensor {i} buffer {len(raw)} -> {len(new)} bytes{' (shape fixed)' if fix else ''}"


def _m_inputs(rng, model, op):
    n_tensors = len(model.subgraphs[0].tensors)
    inputs = [int(i) for i in (op.inputs if op.inputs is not None else [])]
    r = rng.random()
    if r < 0.2 and inputs:
        inputs.pop()
        what = "drop last"
    elif r < 0.35:
        inputs.append(int(rng.integers(0, n_tensors)))
        what = "extra input"
    elif r < 0.5 and len(inputs) >= 2:
        a, b = rng.choice(len(inputs), 2, replace=False)
        inputs[a], inputs[b] = inputs[b], inputs[a]
        what = "swap"
    elif r < 0.65 and inputs:
        inputs[int(rng.integers(len(inputs)))] = -1
        what = "optional (-1)"
    elif r < 0.75 and inputs:
        inputs[int(rng.integers(len(inputs)))] = int(_pick(rng, (n_tensors, n_tensors + 7, -2, 2**31 - 1)))
        what = "out of range"
    elif r < 0.85 and inputs:
        inputs[int(rng.integers(len(inputs)))] = int(rng.integers(0, n_tensors))
        what = "other tensor"
    else:
        inputs = []
        what = "no inputs"
    op.inputs = np.array(inputs, np.int32)
    return f"inputs: {what} -> {inputs}"


def _m_opcode(rng, model, op):
    code = model.operatorCodes[op.opcodeIndex]
    if rng.random() < 0.6:
        code.version = int(_pick(rng, (0, 2, 3, -1, 1000)))
        return f"opcode version -> {code.version}"
    code.customCode = _pick(rng, (b"GQ_FULLY_CONNECTE", b"GQ_FULLY_CONNECTED2", b"gq_fully_connected",
                                  b"GQ_FULLY_CONNECTED\x00X"))
    return f"opcode name -> {code.customCode!r}"


def _m_rebits(rng, model, op):
    """Consistent change of bits (options, packed weights, centroids): must still run."""
    from converters import layout

    try:
        opts = get_options(op)
        in_f, out_f = int(opts["in_features"]), int(opts["out_features"])
        packed_i, cent_i = int(op.inputs[1]), int(op.inputs[2])
    except Exception:  # noqa: BLE001  (options or inputs already mutated away)
        return "rebits (inconsistent op)"
    bits = int(rng.integers(1, 9))
    if min(packed_i, cent_i) < 0 or max(packed_i, cent_i) >= len(model.subgraphs[0].tensors):
        return "rebits (bad inputs)"
    if buffer_of(model, packed_i).data is None or buffer_of(model, cent_i).data is None:
        return "rebits (non-constant inputs)"
    if not (0 < in_f <= 4096 and 0 < out_f <= 4096):
        return "rebits (odd shape)"
    packed = layout.pack(rng.integers(0, 2**bits, (out_f, in_f)), bits)
    set_buffer(model, packed_i, packed.tobytes(), fix_shape=True)
    set_buffer(model, cent_i, rng.normal(size=2**bits).astype(np.float32).tobytes(), fix_shape=True)
    opts["bits"] = bits
    set_options(op, opts)
    return f"consistent bits -> {bits}"


MUTATIONS = (
    (_m_opt_flip, 3),
    (_m_opt_truncate, 2),
    (_m_opt_extend, 1),
    (_m_opt_random, 1),
    (_m_opt_value, 4),
    (_m_opt_keys, 2),
    (_m_tensor_type, 2),
    (_m_tensor_shape, 3),
    (_m_x_batch, 1),
    (_m_buffer, 3),
    (_m_inputs, 2),
    (_m_opcode, 1),
    (_m_rebits, 2),
)


def make_case(bases, seed, number):
    """Case ``number`` of the stream ``seed``: (tflite bytes, description)."""
    rng = np.random.default_rng([seed, number])
    base = int(rng.integers(len(bases)))
    model = flatbuf.read(bases[base])
    ops = gq_ops(model)
    steps = []
    weights = np.array([w for _, w in MUTATIONS], float)
    for _ in range(int(rng.integers(1, 4))):
        op = _pick(rng, ops)
        fn = MUTATIONS[int(rng.choice(len(MUTATIONS), p=weights / weights.sum()))][0]
        steps.append(fn(rng, model, op))
    return flatbuf.write(model), f"base {base}: " + "; ".join(steps)


# ----------------------------------------------------------------- worker


def _write_cases(path, cases):
    with open(path, "wb") as f:
        for number, data in cases:
            f.write(struct.pack("<QQ", number, len(data)))
            f.write(data)


def _read_cases(path):
    with open(path, "rb") as f:
        while True:
            head = f.read(16)
            if len(head) < 16:
                return
            number, size = struct.unpack("<QQ", head)
            yield number, f.read(size)


def _one_line(exc):
    text = re.sub(r"\s+", " ", str(exc)).strip()
    return f"{type(exc).__name__}: {text[:400]}"


def worker(case_file, skip, runtime, library):
    """Runs the cases of ``case_file`` after the first ``skip``; one line per event."""
    from converters import runtime as rt

    if library:
        rt.delegate_path = lambda: library  # e.g. the sanitizer build
    out = sys.stdout
    rng = np.random.default_rng(0)
    for k, (number, data) in enumerate(_read_cases(case_file)):
        if k < skip:
            continue
        out.write(f"BEGIN {number}\n")
        out.flush()
        try:
            interpreter = rt.make_interpreter(data, runtime=runtime)
        except Exception as e:  # noqa: BLE001  (every clean error counts)
            out.write(f"END {number} rejected {_one_line(e)}\n")
            out.flush()
            continue
        for d in interpreter.get_input_details():
            try:
                value = rng.normal(size=d["shape"]).astype(d["dtype"])
                interpreter.set_tensor(d["index"], value)
            except Exception:  # noqa: BLE001, S110  (odd dtypes: run on whatever is there)
                pass
        try:
            interpreter.invoke()
            for d in interpreter.get_output_details():
                interpreter.get_tensor(d["index"])
            out.write(f"END {number} ok\n")
        except Exception as e:  # noqa: BLE001
            out.write(f"END {number} invoke_error {_one_line(e)}\n")
        out.flush()


# ----------------------------------------------------------------- driver


def sanitizer_env():
    """Environment for a worker that loads an ASan/UBSan delegate, or None.

    LD_PRELOAD of gcc's libasan makes the ASan runtime come first in a Python
    process that was not built with it.
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    libasan = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True,
                             text=True, check=False).stdout.strip()
    if not os.path.isabs(libasan) or not os.path.exists(libasan):
        return None
    # libstdc++ is preloaded too: ASan resolves the real __cxa_throw when it
    # starts, and Python itself does not link libstdc++, so without it every
    # C++ exception the runtime throws (its way of reporting a bad model)
    # ends in an ASan CHECK failure.
    libstdcxx = subprocess.run([gcc, "-print-file-name=libstdc++.so.6"], capture_output=True,
                               text=True, check=False).stdout.strip()
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(p for p in (libasan, libstdcxx) if os.path.isabs(p))
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
    return env


def build_sanitized_delegate(out_dir):
    """Builds the delegate with -fsanitize=address,undefined into out_dir.

    Every source of ``converters/cbuild.py`` with its instruction-set flags,
    as setup.py builds it (the SIMD kernels run only where the CPU has them).
    """
    from converters import cbuild

    out = Path(out_dir) / "libgq_delegate_asan.so"
    arch = cbuild.arch_of("gcc")
    flags = ["-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-fPIC",
             "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    objects = []
    for src in cbuild.DELEGATE_SOURCES:
        obj = Path(out_dir) / (src.replace("/", "_")[: -len(".c")] + ".asan.o")
        subprocess.run(["gcc", *flags, *cbuild.source_flags(src, arch), "-c", str(ROOT / src), "-o", str(obj)],
                       check=True, capture_output=True, text=True)
        objects.append(str(obj))
    subprocess.run(["gcc", "-shared", "-fsanitize=address,undefined", "-o", str(out), *objects],
                   check=True, capture_output=True, text=True)
    return str(out)


class Result:
    """Outcome counts of a fuzz run, with the crashing cases."""

    def __init__(self):
        self.status = collections.Counter()
        self.messages = collections.Counter()
        self.error_types = collections.Counter()
        self.crashes = []  # (case number, description, stderr tail)

    @property
    def cases(self):
        return sum(self.status.values())

    def summary(self):
        lines = [
            f"cases: {self.cases}",
            f"errors reported cleanly: {self.status['rejected'] + self.status['invoke_error']} "
            f"(at load/prepare: {self.status['rejected']}, at invoke: {self.status['invoke_error']}; "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.error_types.items())) + ")",
            f"successes: {self.status['ok']}",
            f"crashes: {self.status['crash']}",
            f"hangs: {self.status['hang']}",
        ]
        return "\n".join(lines)


def _message_kind(line):
    """A message with its numbers and quoted values blanked, for tallies."""
    gq = re.search(r"GQ_FULLY_CONNECTED \(node \d+\): (.*?)(Node number|$)", line)
    text = gq.group(1) if gq else line
    text = re.sub(r"'[^']*'", "'…'", text)
    return re.sub(r"-?\d+", "N", text)[:120]


def _run_chunk(case_file, numbers, descriptions, runtime, library, env, timeout):
    """Runs one chunk, restarting after crashes. Returns a list of events."""
    events, skip = [], 0
    while skip < len(numbers):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(case_file),
               "--skip", str(skip), "--runtime", runtime]
        if library:
            cmd += ["--library", library]
        # The workers import the same `converters` as a `python -m pytest` run
        # from the repository root: the source tree first.
        worker_env = dict(os.environ if env is None else env)
        worker_env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT)] + [p for p in worker_env.get("PYTHONPATH", "").split(os.pathsep) if p])
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=worker_env, capture_output=True, text=True,
                                  timeout=timeout, check=False)
            stdout, stderr, hung = proc.stdout, proc.stderr, False
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            hung = True
        if skip == 0 and "BEGIN" not in stdout:
            # Not a case: the worker itself could not start (environment).
            raise RuntimeError(f"fuzz worker failed to start: {cmd}\n{stderr[-3000:]}")
        begun, done = None, 0
        for line in stdout.splitlines():
            parts = line.split(" ", 3)
            if parts[0] == "BEGIN":
                begun = int(parts[1])
            elif parts[0] == "END":
                status = parts[2]
                events.append((int(parts[1]), status, parts[3] if len(parts) > 3 else ""))
                begun = None
                done += 1
        skip += done
        if skip >= len(numbers):
            break
        # The worker stopped early: the case it had begun killed it.
        number = begun if begun is not None else numbers[skip]
        tail = "\n".join(stderr.strip().splitlines()[-25:])
        events.append((number, "hang" if hung else "crash", tail))
        skip += 1
    return events


def run(cases, *, runtime="litert", library=None, env=None, jobs=1, chunk=1500, timeout=600):
    """Runs ``cases`` (list of (number, bytes, description)) in worker processes."""
    result = Result()
    desc = {n: d for n, _, d in cases}
    chunk = max(1, min(chunk, -(-len(cases) // max(1, jobs))))
    with tempfile.TemporaryDirectory(prefix="gq_fuzz_") as tmp:
        chunks = []
        for start in range(0, len(cases), chunk):
            part = cases[start:start + chunk]
            path = Path(tmp) / f"cases_{start}.bin"
            _write_cases(path, [(n, data) for n, data, _ in part])
            chunks.append((path, [n for n, _, _ in part]))
        with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
            futures = [pool.submit(_run_chunk, path, numbers, desc, runtime, library, env, timeout)
                       for path, numbers in chunks]
            for future in futures:
                for number, status, text in future.result():
                    result.status[status] += 1
                    if status in ("rejected", "invoke_error"):
                        result.error_types[text.split(":", 1)[0]] += 1
                        result.messages[_message_kind(text)] += 1
                    elif status in ("crash", "hang"):
                        result.crashes.append((number, desc.get(number, "?"), text))
    return result


def generate(bases, seed, count, first=0):
    return [(n, *make_case(bases, seed, n)) for n in range(first, first + count)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=int(os.environ.get("GQ_FUZZ_CASES", "1000")))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runtime", default="litert", choices=("litert", "tflite"))
    parser.add_argument("--asan", action="store_true",
                        help="load a delegate built with -fsanitize=address,undefined")
    parser.add_argument("--crash-dir", help="write crashing cases (.tflite + .txt) here")
    parser.add_argument("--top", type=int, default=15, help="show the N most frequent errors")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--skip", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--library", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.skip, args.runtime, args.library)
        return 0

    t0 = time.time()
    bases = base_models()
    cases = generate(bases, args.seed, args.cases)
    t1 = time.time()
    library = env = None
    tmp = None
    if args.asan:
        env = sanitizer_env()
        if env is None:
            print("no gcc libasan found", file=sys.stderr)
            return 2
        tmp = tempfile.mkdtemp(prefix="gq_asan_")
        library = build_sanitized_delegate(tmp)
    result = run(cases, runtime=args.runtime, library=library, env=env, jobs=args.jobs)
    t2 = time.time()
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    print(result.summary())
    print(f"time: {t1 - t0:.1f} s to build and mutate, {t2 - t1:.1f} s to run "
          f"(seed {args.seed}, runtime {args.runtime}{', ASan+UBSan delegate' if args.asan else ''})")
    if args.top:
        print("most frequent errors:")
        for text, n in result.messages.most_common(args.top):
            print(f"  {n:6d}  {text}")
    for number, description, tail in result.crashes:
        print(f"CRASH case {number}: {description}\n{tail}\n")
        if args.crash_dir:
            os.makedirs(args.crash_dir, exist_ok=True)
            data = make_case(bases, args.seed, number)[0]
            Path(args.crash_dir, f"case_{number}.tflite").write_bytes(data)
            Path(args.crash_dir, f"case_{number}.txt").write_text(f"{description}\n{tail}\n")
    return 1 if result.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
