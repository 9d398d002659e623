"""android_bench: latency and memory of TFLite models, on Android devices and here.

- ``python -m android_bench run MODEL...`` benchmarks models on a phone over
  adb with TFLite's stock ``benchmark_model`` and our delegate, or on this
  machine with ``--host``, and writes results.json, report.md and report.png
  (``run.py``, ``targets.py``, ``adb.py``, ``report.py``);
- ``python -m android_bench build-delegate`` builds the delegate with the
  Android NDK (``ndk.py``);
- ``python -m android_bench kernels`` times the GQ kernels against XNNPACK
  (``kernels.py``).
"""
