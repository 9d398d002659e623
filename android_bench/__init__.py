"""android_bench: latency and memory of TFLite models, on Android devices and here.

- ``android_bench.benchmark(models, target="host" | "device" | SERIAL, ...)``
  benchmarks .tflite models on this machine or on a phone over adb and
  returns a :class:`~android_bench.run.Results` (``results.json``'s content,
  summaries per model, the exit status); it writes results.json, report.md
  and report.png only when given ``out_dir`` (``run.py``);
- ``python -m android_bench run MODEL...``, the same as a command: on a phone
  over adb with TFLite's stock ``benchmark_model`` and our delegate, or on
  this machine with ``--host``; it always writes the reports (``run.py``,
  ``targets.py``, ``adb.py``, ``report.py``);
- ``python -m android_bench build-delegate`` builds the delegate with the
  Android NDK (``ndk.py``);
- ``python -m android_bench kernels`` times the GQ kernels against XNNPACK
  (``kernels.py``).

Bad arguments raise :class:`BenchArgumentError` (a ``ValueError``), other
failures the user can act on (no adb, no device, ...) :class:`BenchError`.

Example:
  >>> import android_bench
  >>> res = android_bench.benchmark(["fc_gq.tflite", "fc_int8.tflite"], runs=20)
  >>> res.summaries["fc_gq"]["p50_us"]
"""

import importlib

# Names resolve on first use: importing the package stays light (run.py
# pulls in NumPy and the report code).
_WHERE = {
    "benchmark": "android_bench.run",
    "Results": "android_bench.run",
    "BenchError": "android_bench.errors",
    "BenchArgumentError": "android_bench.errors",
}

__all__ = ["benchmark", "Results", "BenchError", "BenchArgumentError"]


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'android_bench' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_WHERE))
