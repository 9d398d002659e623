"""android_bench: latency and memory of TFLite models on Android devices over adb.

Not built yet (benchmark issue).
"""
