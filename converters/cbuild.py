"""What the C library is made of and how each file is compiled.

One table for every build of the C code: ``setup.py`` (the host library),
the tests (sanitizer builds, the aarch64 cross build run under qemu) and,
later, the Android NDK build. It imports nothing but the standard library,
so ``setup.py`` can load it before the package is installed.

Each SIMD kernel file is compiled with its own instruction-set flags and
compiles to nothing on other architectures; ``gq_fc_dispatch.c`` picks the
variant at run time from the CPU's features, so a library built here never
executes an instruction the CPU lacks.
"""

from __future__ import annotations

import subprocess

KERNEL_DIR = "converters/kernels"
DELEGATE_DIR = "converters/delegate"

# gq_fc_layout.c is the packed layout (the C twin of converters/layout.py),
# shared by every kernel variant; gq_fc_ref.c is the reference kernel alone.
KERNEL_SOURCES = (
    f"{KERNEL_DIR}/gq_fc_layout.c",
    f"{KERNEL_DIR}/gq_fc_ref.c",
    f"{KERNEL_DIR}/gq_fc_qd8.c",
    f"{KERNEL_DIR}/gq_fc_dispatch.c",
    f"{KERNEL_DIR}/gq_fc_avx2.c",
    f"{KERNEL_DIR}/gq_fc_avx512.c",
    f"{KERNEL_DIR}/gq_fc_neon.c",
    f"{KERNEL_DIR}/gq_fc_neondot.c",
    f"{KERNEL_DIR}/gq_lstm_cell.c",
    f"{KERNEL_DIR}/gq_lstm_cell_avx2.c",
    f"{KERNEL_DIR}/gq_lstm_cell_avx512.c",
    f"{KERNEL_DIR}/gq_lstm_cell_neon.c",
)
DELEGATE_SOURCES = KERNEL_SOURCES + (
    f"{DELEGATE_DIR}/flexbuf.c",
    f"{DELEGATE_DIR}/gq_threads.c",
    f"{DELEGATE_DIR}/gq_common.c",
    f"{DELEGATE_DIR}/gq_delegate.c",
    f"{DELEGATE_DIR}/gq_lstm.c",
)
HEADERS = (
    f"{KERNEL_DIR}/gq_fc.h",
    f"{KERNEL_DIR}/gq_fc_internal.h",
    f"{DELEGATE_DIR}/flexbuf.h",
    f"{DELEGATE_DIR}/gq_common.h",
    f"{DELEGATE_DIR}/gq_threads.h",
    f"{DELEGATE_DIR}/gq_lstm.h",
    f"{DELEGATE_DIR}/tflite_abi.h",
)

# Flags of the library's own build (the tests add stricter warnings).
C_FLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC")

# Instruction sets per file and architecture. A file not listed for an
# architecture gets no extra flags (and its #if makes it empty there).
_AVX2 = ("-mavx2", "-mfma")
_AVX512 = _AVX2 + ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vbmi", "-mavx512vnni")
# i686 (Android's 32-bit x86 ABI) compiles the same x86 kernel files.
_ISA_FLAGS = {
    "gq_fc_avx2.c": {"x86_64": _AVX2, "i686": _AVX2},
    "gq_fc_avx512.c": {"x86_64": _AVX512, "i686": _AVX512},
    "gq_lstm_cell_avx2.c": {"x86_64": _AVX2, "i686": _AVX2},
    "gq_lstm_cell_avx512.c": {"x86_64": _AVX512, "i686": _AVX512},
    "gq_fc_neondot.c": {"aarch64": ("-march=armv8.2-a+dotprod",)},
}


def arch_of(cc: list[str] | tuple[str, ...] | str) -> str:
    """The target architecture of a compiler: ``x86_64``, ``aarch64``, ...

    Asked from the compiler (``-dumpmachine``), not from this machine, so a
    cross compiler gets its target's flags.
    """
    cmd = [cc] if isinstance(cc, str) else list(cc)
    out = subprocess.run(cmd + ["-dumpmachine"], check=True, capture_output=True, text=True)
    return out.stdout.strip().split("-")[0]


def source_flags(src: str, arch: str) -> tuple[str, ...]:
    """Instruction-set flags for one source file on one architecture."""
    name = src.replace("\\", "/").rsplit("/", 1)[-1]
    return _ISA_FLAGS.get(name, {}).get(arch, ())
