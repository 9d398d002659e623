"""Running GQ .tflite models: an interpreter with the project's delegate loaded.

The ``GQ_*`` custom ops are executed by ``libgq_delegate.so``, a TFLite
delegate plugin built from ``converters/delegate`` and ``converters/kernels``
by ``setup.py`` (``pip install -e .``). Both supported runtimes load it the
same way (``load_delegate``): LiteRT (``ai_edge_litert``, the default) and
TensorFlow's ``tf.lite``. Importing this module does not import TensorFlow;
only ``runtime="tflite"`` does.

Example:
  >>> from converters.runtime import make_interpreter
  >>> interpreter = make_interpreter("model.tflite")
  >>> interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
  >>> interpreter.invoke()
"""

import ctypes
import functools
import mmap
import os
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

from converters import modelcheck

__all__ = ["RUNTIMES", "KernelInfo", "kernels", "auto_kernel", "custom_ops", "delegate_path", "make_interpreter"]

RUNTIMES = ("litert", "tflite")

_LIBRARY = "libgq_delegate.so"
# Op versions this delegate implements, by custom op name. The runtimes give
# a delegate no way to see the version of an unresolved custom op (their
# placeholder registration always says 1), so it is checked here.
_OP_VERSIONS = {"GQ_FULLY_CONNECTED": (1,), "GQ_LSTM": (1,)}
_BUILTIN_CUSTOM = 32


def delegate_path():
    """Absolute path of the built delegate library.

    Returns:
      ``str``: the path of ``converters/libgq_delegate.so``.

    Raises:
      FileNotFoundError: the library has not been built.
    """
    path = Path(__file__).resolve().parent / _LIBRARY
    if not path.is_file():
        raise FileNotFoundError(
            f"The GQ delegate library was not found at {path}. It is built by the package "
            "install: run `pip install -e .` (or `pip install .`) in the gq-tf source tree "
            "(needs a C11 compiler, e.g. gcc)."
        )
    return str(path)


class KernelInfo(NamedTuple):
    """One GQ_FULLY_CONNECTED kernel variant compiled into the delegate."""

    name: str  # the delegate's `kernel` option value
    supported: bool  # this CPU has every instruction it uses
    qd8: bool  # int8 activations and centroid codes (gq_fc.h); else exact float32


@functools.lru_cache(maxsize=None)
def _library():
    lib = ctypes.CDLL(delegate_path())
    lib.gq_fc_kernel_count.restype = ctypes.c_size_t
    lib.gq_fc_kernel_at.restype = ctypes.c_void_p
    lib.gq_fc_kernel_at.argtypes = [ctypes.c_size_t]
    lib.gq_fc_kernel_supported.restype = ctypes.c_int
    lib.gq_fc_kernel_supported.argtypes = [ctypes.c_void_p]
    lib.gq_fc_kernel_find.restype = ctypes.c_void_p
    lib.gq_fc_kernel_find.argtypes = [ctypes.c_char_p]
    return lib


class _CKernelInfo(ctypes.Structure):
    # gq_fc_kernel_info in converters/kernels/gq_fc.h
    _fields_ = [("name", ctypes.c_char_p), ("fn", ctypes.c_void_p), ("qd8", ctypes.c_int), ("rank", ctypes.c_int),
                ("cell", ctypes.c_void_p)]


def kernels():
    """The kernel variants in the built delegate, e.g. ``reference``,
    ``scalar``, ``avx2``, ``avx512`` on x86-64 (``neon``, ``neondot`` on
    aarch64), each with whether this CPU runs it.

    Returns:
      list of ``KernelInfo``.
    """
    lib = _library()
    out = []
    for i in range(lib.gq_fc_kernel_count()):
        ptr = lib.gq_fc_kernel_at(i)
        info = _CKernelInfo.from_address(ptr)
        out.append(KernelInfo(info.name.decode(), bool(lib.gq_fc_kernel_supported(ptr)), bool(info.qd8)))
    return out


def auto_kernel():
    """Name of the kernel ``kernel="auto"`` runs on this CPU."""
    ptr = _library().gq_fc_kernel_find(b"auto")
    return _CKernelInfo.from_address(ptr).name.decode()


def _runtime_module(runtime):
    """(Interpreter class, load_delegate function) of a runtime name."""
    if runtime == "litert":
        from ai_edge_litert import interpreter as litert

        return litert.Interpreter, litert.load_delegate
    if runtime == "tflite":
        from gq_tf._keras import tf  # sets TF_USE_LEGACY_KERAS before TensorFlow loads

        return tf.lite.Interpreter, tf.lite.experimental.load_delegate
    raise ValueError(f"Expected runtime in {RUNTIMES}. Received: runtime={runtime!r}")


def _custom_op_codes(buf):
    """(name, version) of every custom operator code of a model flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(buf, 0)
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        if builtin == _BUILTIN_CUSTOM and custom is not None:
            yield custom.decode("utf-8", "replace"), code.Version()


def custom_ops(model_path_or_bytes):
    """Names of the custom ops a .tflite model uses (e.g. ``["GQ_FULLY_CONNECTED"]``).

    A model that uses any ``GQ_*`` op needs this project's delegate to run.

    Raises:
      ValueError: not a TFLite model (or a flatbuffer too damaged to read).
      FileNotFoundError: the file does not exist.
    """
    _, name, buf = modelcheck.model_source(model_path_or_bytes)
    try:
        return sorted({op for op, _ in _custom_op_codes(buf)})
    except Exception as e:  # the flatbuffer reader raises anything on damaged data
        raise ValueError(f"Model {name} is not a readable TFLite flatbuffer: {type(e).__name__}: {e}") from None
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()


def _check_op_versions(buf, name):
    """Rejects GQ custom ops of a version this delegate does not implement.

    Runs after the runtime has verified the flatbuffer, so reading it is safe.
    """
    for op, version in _custom_op_codes(buf):
        if op in _OP_VERSIONS and version not in _OP_VERSIONS[op]:
            raise RuntimeError(
                f"Model {name}: custom op {op} has version {version}; this delegate "
                f"implements version(s) {', '.join(map(str, _OP_VERSIONS[op]))}. The model was "
                "written by a newer gq-tf: update the package or re-export the model."
            )


def make_interpreter(model_path_or_bytes, *, num_threads=1, runtime="litert", kernel="auto"):
    """Opens a .tflite model with the GQ delegate loaded and tensors allocated.

    Args:
      model_path_or_bytes: path of a .tflite file (``str`` or ``os.PathLike``),
        or the model's bytes.
      num_threads: threads for the runtime's own kernels (1 gives reproducible
        timings on small machines).
      runtime: ``"litert"`` (``ai_edge_litert.interpreter``) or ``"tflite"``
        (TensorFlow's ``tf.lite.Interpreter``).
      kernel: GQ kernel of the delegate: ``"auto"`` (the fastest this CPU
        runs: int8 activations, see docs/KERNELS.md), ``"reference"`` (exact
        float32, portable, slow) or the name of any variant ``kernels()``
        lists as supported (e.g. ``"avx2"``, ``"scalar"``).

    Returns:
      The runtime's ``Interpreter``, ``allocate_tensors()`` already called.

    Raises:
      ValueError: unknown ``runtime`` or ``kernel``, bad ``num_threads``, bytes
        or a file that are not a TFLite model, a model the structural checks
        refuse (``converters.modelcheck.check_model``: constant graph inputs,
        indices out of range, sizes the file cannot hold, GQ weights that are
        not constants...; checked before the runtime reads the model), or a
        model the runtime refuses to load (its message is included).
      FileNotFoundError: the model file or the delegate library is missing.
      TypeError: ``model_path_or_bytes`` is neither a path nor bytes.
      RuntimeError: the model loads but cannot be prepared: an unsupported GQ
        op version, or tensor allocation failed, e.g. the delegate rejected a
        malformed GQ op (the runtime's message, which contains the delegate's,
        and the model name are included).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"Expected runtime in {RUNTIMES}. Received: runtime={runtime!r}")
    usable = ["auto"] + [k.name for k in kernels() if k.supported]
    if kernel not in usable:
        raise ValueError(f"Expected kernel in {usable} (the variants this CPU runs). Received: kernel={kernel!r}")
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"Expected num_threads >= 1. Received: num_threads={num_threads!r}")
    source, name, buf = modelcheck.model_source(model_path_or_bytes)
    try:
        # Before the runtime sees the model: it trusts indices, sizes and
        # tensor roles, and some defects crash it instead of failing.
        modelcheck.check_bytes(buf, name)
        return _open(source, name, buf, num_threads, runtime, kernel)
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()


def _open(source, name, buf, num_threads, runtime, kernel):
    if "model_content" in source:
        # The runtimes use model bytes in place, and a Python bytes object's
        # data never starts on a 64-byte boundary: the packed weights would
        # be misaligned for the SIMD kernels (flatbuf.BUFFER_ALIGNMENT).
        # Through a file the runtime maps it page-aligned; the file is
        # unlinked at once (the mapping outlives it).
        with tempfile.NamedTemporaryFile(suffix=".tflite", delete=False) as f:
            f.write(source["model_content"])
        try:
            return _open({"model_path": f.name}, name, buf, num_threads, runtime, kernel)
        finally:
            os.unlink(f.name)
    library = delegate_path()
    interpreter_cls, load_delegate = _runtime_module(runtime)
    delegate = load_delegate(library, {"kernel": kernel})
    try:
        with warnings.catch_warnings():
            # tf.lite.Interpreter warns that it is deprecated on every
            # construction; runtime="tflite" is an explicit, supported choice.
            warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
            interpreter = interpreter_cls(
                **source, experimental_delegates=[delegate], num_threads=num_threads
            )
    except ValueError as e:
        raise ValueError(f"The {runtime} runtime could not load model {name}: {e}") from e
    except RuntimeError as e:
        raise RuntimeError(f"The {runtime} runtime could not load model {name}: {e}") from e
    _check_op_versions(buf, name)
    try:
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as e:
        raise RuntimeError(
            f"The {runtime} runtime could not prepare model {name} (allocate_tensors): {e}"
        ) from e
    return interpreter
