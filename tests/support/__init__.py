"""Helpers of the tests: fuzzers, the kill-and-resume harness, a fake adb, the cross toolchain, the layering reader."""
