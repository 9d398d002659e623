"""The aarch64 kernels ("neon", "neondot") under qemu-user.

The C test driver (``tests/support/c/test_gq_fc.c``) and every C source of the
kernels are cross-built with ``aarch64-linux-gnu-gcc`` (each file with its
own instruction-set flags from ``converters.cbuild``, then linked) and run
with ``qemu-aarch64-static`` on the same case file as the x86 tests
(``test_c_kernel.py``: NumPy truth, qd8 expectations exact up to the final
float32 rounding). Two CPUs: ``-cpu max`` has the dot product instructions,
so both kernels must run and pass and "auto" must pick neondot;
``-cpu cortex-a72`` (ARMv8.0) has not, so neondot must be reported
unsupported, never run, and "auto" must fall back to neon.

Two builds, as on x86: ``-O2 -static`` and AddressSanitizer +
UndefinedBehaviorSanitizer (dynamic, the target's libraries found through
qemu's ``-L``). LeakSanitizer cannot run under qemu-user (it needs ptrace),
so leaks are checked by the x86 sanitizer build only.

The tools come from Debian (``tests/support/toolchain.py`` installs them when they
are missing). qemu's timings mean nothing, so nothing here measures speed.
"""

import concurrent.futures
import os
import subprocess
from pathlib import Path

import pytest

from converters import cbuild
from tests.converters.test_c_kernel import (
    INCLUDES,
    SANITIZE,
    SANITIZER_MARKS,
    SOURCES,
    WARNINGS,
    cell_cases,
    fc_cases,
    flip_weight_bits,
    parse_kernel_list,
    write_cell_file,
    write_fc_file,
)
from tests.support.toolchain import AARCH64_PACKAGES, ensure_debian_packages

ROOT = Path(__file__).resolve().parents[2]
CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64-static"
PACKAGES = AARCH64_PACKAGES
CPUS = {"max": "neondot", "cortex-a72": "neon"}  # qemu CPU -> auto's expected choice
BUILDS = {
    "O2": (("-O2",), ("-static",)),
    "asan_ubsan": ((*SANITIZE, "-g", "-O1"), ()),
}
RUN_ENV = {
    "ASAN_OPTIONS": "halt_on_error=1:abort_on_error=0:detect_leaks=0:strict_string_checks=1",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}


@pytest.fixture(scope="module")
def toolchain():
    ensure_debian_packages(PACKAGES)
    # The target's root (dynamic loader, libc, libasan) for qemu -L.
    libc = subprocess.run([CC, "-print-file-name=libc.so.6"], check=True, capture_output=True, text=True)
    return str(Path(libc.stdout.strip()).resolve().parent.parent)


def _compile(cmd):
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert r.returncode == 0, f"compile failed:\n{' '.join(cmd)}\n{r.stdout}{r.stderr}"
    assert not r.stderr.strip(), f"compiler printed diagnostics:\n{' '.join(cmd)}\n{r.stderr}"


def cross_build(flags, link_flags, exe):
    """Each source to an object with the strict warnings, the build's flags
    and its own instruction-set flags (in parallel), then one link."""
    assert cbuild.arch_of(CC) == "aarch64"
    jobs = []
    for src in SOURCES:
        obj = exe.parent / (src.replace("/", "_")[:-2] + ".o")
        cmd = [CC, *WARNINGS, *flags, *cbuild.source_flags(src, "aarch64"), *INCLUDES, "-c", str(ROOT / src),
               "-o", str(obj)]
        jobs.append((cmd, obj))
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(_compile, [cmd for cmd, _ in jobs]))
    cmd = [CC, *flags, *link_flags, *(str(obj) for _, obj in jobs), "-lm", "-o", str(exe)]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert r.returncode == 0, f"link failed:\n{' '.join(cmd)}\n{r.stdout}{r.stderr}"
    return exe


@pytest.fixture(scope="module", params=sorted(BUILDS))
def arm_driver(request, toolchain, tmp_path_factory):
    """(driver path, qemu sysroot) for one build (test ids: O2, asan_ubsan)."""
    flags, link_flags = BUILDS[request.param]
    exe = cross_build(flags, link_flags, tmp_path_factory.mktemp(f"gq_arm_{request.param}") / "test_gq_fc")
    return exe, toolchain


def run(driver, cpu, *args):
    exe, sysroot = driver
    env = dict(os.environ, **RUN_ENV)
    cmd = [QEMU, "-cpu", cpu, "-L", sysroot, str(exe), *map(str, args)]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=300)
    marks = [m for m in SANITIZER_MARKS if m in r.stderr]
    assert not marks, f"sanitizer report ({marks}) under -cpu {cpu}:\n{r.stderr[-4000:]}"
    return r


def run_ok(driver, cpu, *args):
    r = run(driver, cpu, *args)
    assert r.returncode == 0, f"driver failed under -cpu {cpu} (exit {r.returncode}):\n{r.stdout}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def fc_file(tmp_path_factory):
    cases = fc_cases()
    path = tmp_path_factory.mktemp("gq_arm_cases") / "fc.bin"
    write_fc_file(path, cases)
    return path, cases


def test_cross_toolchain_targets_aarch64(toolchain):
    assert cbuild.arch_of(CC) == "aarch64"
    assert cbuild.source_flags("converters/kernels/gq_fc_neondot.c", "aarch64") == ("-march=armv8.2-a+dotprod",)
    # The baseline kernel must not need anything beyond ARMv8.0 Advanced SIMD.
    assert cbuild.source_flags("converters/kernels/gq_fc_neon.c", "aarch64") == ()


@pytest.mark.parametrize("cpu", sorted(CPUS))
def test_kernel_list_and_auto_choice(arm_driver, cpu):
    kernels, auto = parse_kernel_list(run_ok(arm_driver, cpu, "list").stdout)
    assert set(kernels) == {"reference", "scalar", "neon", "neondot"}, kernels
    assert kernels["reference"] == (True, False) and kernels["scalar"] == (True, True)
    assert kernels["neon"] == (True, True)
    assert kernels["neondot"] == (cpu == "max", True)
    assert auto == CPUS[cpu]


def test_api_edge_cases(arm_driver):
    assert "api: 0 failure(s)" in run_ok(arm_driver, "max", "api").stdout


def test_kernels_match_reference_with_dotprod(arm_driver, fc_file):
    path, cases = fc_file
    r = run_ok(arm_driver, "max", "fc", path, "all")
    for name in ("reference", "scalar", "neon", "neondot"):
        assert f"fc[{name}]: {len(cases)} cases, " in r.stdout, r.stdout
    assert r.stdout.count(" 0 failure(s)") == 5, r.stdout  # 4 kernels + the total


def test_kernels_match_reference_without_dotprod(arm_driver, fc_file):
    path, cases = fc_file
    r = run_ok(arm_driver, "cortex-a72", "fc", path, "all")
    assert "fc[neondot]: skipped, not supported by this CPU" in r.stdout, r.stdout
    for name in ("reference", "scalar", "neon"):
        assert f"fc[{name}]: {len(cases)} cases, " in r.stdout, r.stdout
    assert r.stdout.count(" 0 failure(s)") == 4, r.stdout
    # Asked for by name, it is refused rather than run (SIGILL).
    r = run(arm_driver, "cortex-a72", "fc", path, "neondot")
    assert r.returncode == 1 and "kernel neondot is not compiled in or not supported" in r.stderr, r.stderr


def test_kernels_detect_flipped_weight_bits(arm_driver, fc_file, tmp_path):
    """The comparison can fail under qemu too: bit 0 of one row's first byte
    (weight 0's lowest index bit) flipped, for every b, must be reported by
    both kernels in exactly those cases."""
    _, cases = fc_file
    bad, victims = flip_weight_bits(cases, range(1, 9))
    path = tmp_path / "flipped.bin"
    write_fc_file(path, bad)
    r = run(arm_driver, "max", "fc", path, "neon", "neondot")
    assert r.returncode == 1, r.stdout + r.stderr
    for name in ("neon", "neondot"):
        failed = {int(line.split()[3]) for line in r.stderr.splitlines() if line.startswith(f"FAIL {name} case ")}
        assert failed == {bad[k]["id"] for k in victims}, (name, r.stderr[-2000:])


@pytest.mark.parametrize("cpu", sorted(CPUS))
def test_lstm_cells_within_stated_bound(arm_driver, cpu, tmp_path):
    """The NEON cell (used by neon and neondot) and the scalar one on the
    x86 test's cases and bound; without dotprod, neondot is skipped."""
    cases = cell_cases()
    path = tmp_path / "cell.bin"
    write_cell_file(path, cases)
    r = run_ok(arm_driver, cpu, "cell", path, "all")
    expected = {"reference", "scalar", "neon"} | ({"neondot"} if cpu == "max" else set())
    for name in expected:
        assert f"cell[{name}]: {len(cases)} cases, " in r.stdout, r.stdout
    assert r.stdout.count(" 0 failure(s)") == len(expected) + 1, r.stdout  # + the total
