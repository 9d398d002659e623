"""android_bench: latency and memory of TFLite models.

``python -m android_bench kernels`` times the GQ kernels against XNNPACK's
float32 and int8 fully connected kernels on this machine (``kernels.py``).
The adb harness for Android devices is the benchmark issue's work.
"""
