"""``python -m android_bench build-delegate``: the delegate built with an NDK's CMake toolchain.

There is no Android NDK here, so the tests make a stand-in one: a folder with
``build/cmake/android.toolchain.cmake`` that, like the real file, reads
``ANDROID_ABI`` and picks the compiler for it (``aarch64-linux-gnu-gcc`` for
arm64-v8a, the host ``gcc`` for x86_64). Everything after the toolchain file
is the real path: the generated CMake project, configure, build, the ELF
check and the install into the output folder.

The arm64 build is checked statically (ELF machine, exported symbols, 16 KB
segment alignment, per-file instruction-set flags); the x86_64 build is
loaded by LiteRT as an external delegate and must give the same outputs, bit
for bit, as the library ``setup.py`` built (same compiler, same flags, same
integer arithmetic in the kernels, so there is no rounding to allow for).
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from android_bench import ndk
from android_bench.errors import BenchError
from android_bench.recognizer import RUNNER_SOURCES
from android_bench.targets import elf_machine
from converters import cbuild
from tests.support.toolchain import ensure_debian_packages

ROOT = Path(__file__).resolve().parents[2]
HOST_LIBRARY = ROOT / "converters" / "libgq_delegate.so"
ARM_PACKAGES = {
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    # crt files and libc.so for linking a shared library: only recommended by gcc.
    "/usr/aarch64-linux-gnu/lib/libc.so": "libc6-dev-arm64-cross",
}
HOST_COMPILERS = {"arm64-v8a": "aarch64-linux-gnu-gcc", "x86_64": "gcc"}


def make_ndk(path: Path, compilers=None) -> Path:
    """A stand-in NDK: a toolchain file that maps ANDROID_ABI to a compiler."""
    compilers = HOST_COMPILERS if compilers is None else compilers
    branches = "".join(
        f'{"if" if i == 0 else "elseif"}(ANDROID_ABI STREQUAL "{abi}")\n'
        f'  set(CMAKE_C_COMPILER "{cc}")\n'
        for i, (abi, cc) in enumerate(compilers.items()))
    toolchain = path / "build" / "cmake" / "android.toolchain.cmake"
    toolchain.parent.mkdir(parents=True)
    toolchain.write_text(
        "# Stand-in for the NDK's toolchain file (tests/android_bench/test_build_delegate.py).\n"
        "set(CMAKE_SYSTEM_NAME Linux)\n"
        # CMake's compiler checks configure scratch projects that see only
        # the variables listed here (the real NDK file does the same).
        "list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES ANDROID_ABI)\n"
        + branches
        + 'else()\n  message(FATAL_ERROR "stand-in NDK: no compiler for ANDROID_ABI=${ANDROID_ABI}")\nendif()\n')
    return path


def compile_commands(build_dir: Path) -> dict[str, str]:
    """Source file name -> its compile command."""
    entries = json.loads((build_dir / "build" / "compile_commands.json").read_text())
    return {Path(e["file"]).name: e.get("command") or " ".join(e["arguments"]) for e in entries}


def exported_symbols(library: Path) -> set[str]:
    # readelf reads any architecture's ELF files (nm may not).
    out = subprocess.run(["readelf", "--dyn-syms", "--wide", str(library)], capture_output=True,
                         text=True, check=True).stdout
    symbols = set()
    for line in out.splitlines():
        parts = line.split()
        # Num: Value Size Type Bind Vis Ndx Name
        if len(parts) >= 8 and parts[4] == "GLOBAL" and parts[5] == "DEFAULT" and parts[6] != "UND":
            symbols.add(parts[7].split("@")[0])
    return symbols


def load_alignments(library: Path) -> list[int]:
    out = subprocess.run(["readelf", "--program-headers", "--wide", str(library)], capture_output=True,
                         text=True, check=True).stdout
    return [int(line.split()[-1], 16) for line in out.splitlines() if line.split()[:1] == ["LOAD"]]


def cli(argv):
    """``build-delegate`` through its own argparse parser (as __main__ wires it)."""
    parser = argparse.ArgumentParser()
    ndk.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def standin_ndk(tmp_path_factory):
    return make_ndk(tmp_path_factory.mktemp("ndk") / "27.2.12479018")


@pytest.fixture(scope="module")
def arm64_build(standin_ndk, tmp_path_factory):
    ensure_debian_packages(ARM_PACKAGES)
    tmp = tmp_path_factory.mktemp("arm64")
    lines = []
    library = ndk.build_delegate(standin_ndk, "arm64-v8a", tmp / "out", build_dir=tmp / "bd", log=lines.append)
    return library, tmp / "bd", lines


@pytest.fixture(scope="module")
def x86_64_build(standin_ndk, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("x86_64")
    with pytest.MonkeyPatch.context() as mp:
        # Host compiler settings must not reach the Android build: this
        # CFLAGS would fail every compile.
        mp.setenv("CFLAGS", "-march=not-a-cpu -DGQ_HOST_CFLAGS_LEAKED")
        status = cli(["build-delegate", "--ndk", str(standin_ndk), "--abi", "x86_64",
                      "--out", str(tmp / "out"), "--build-dir", str(tmp / "bd")])
    assert status == 0
    return tmp / "out" / ndk.LIBRARY, tmp / "bd"


# ------------------------------------------------------------ arm64-v8a


def test_arm64_library_is_aarch64_elf(arm64_build):
    library, _, lines = arm64_build
    assert library.name == "libgq_delegate.so" and library.is_file()
    assert elf_machine(library) == 183
    assert lines[0].startswith("configuring: ") and "arm64-v8a" in lines[0] and "android-24" in lines[0]
    assert lines[-1].startswith(f"done: {library} (") and "e_machine 183" in lines[-1]


def test_arm64_exports_the_same_api_as_the_host_library(arm64_build):
    symbols = exported_symbols(arm64_build[0])
    assert {"tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate"} <= symbols
    # Visibility as setup.py sets it: the plugin entry points and the kernel API.
    assert symbols == exported_symbols(HOST_LIBRARY)


def test_segments_are_aligned_for_16k_pages(arm64_build, x86_64_build):
    # Exactly 16 KB: the linkers' defaults differ (4 KB on x86-64, 64 KB for
    # aarch64 GNU ld), so only the link option gives this on both.
    for library in (arm64_build[0], x86_64_build[0]):
        alignments = load_alignments(library)
        assert alignments and set(alignments) == {16384}, library


def test_arm64_compile_flags_come_from_cbuild(arm64_build):
    commands = compile_commands(arm64_build[1])
    # The delegate's sources, and the native runner's (built beside it).
    runner = {Path(s).name for s in RUNNER_SOURCES}
    assert set(commands) == {Path(s).name for s in cbuild.DELEGATE_SOURCES} | runner
    assert elf_machine(arm64_build[0].parent / "gq_stream") == 183
    for name in runner:
        assert "-Werror" not in commands[name].split() and "-std=c11" in commands[name].split()
    for src in cbuild.DELEGATE_SOURCES:
        command = commands[Path(src).name]
        words = command.split()
        assert "-Werror" not in words, src
        for flag in set(cbuild.C_FLAGS) - {"-Werror"}:
            assert flag in words, (src, flag)
        visibility = [w for w in words if w.startswith("-fvisibility=")]
        kernel = src.startswith(cbuild.KERNEL_DIR + "/")
        assert visibility[-1] == ("-fvisibility=default" if kernel else "-fvisibility=hidden"), src
    assert "-march=armv8.2-a+dotprod" in commands["gq_fc_neondot.c"].split()
    assert not any("dotprod" in c or "-mavx" in c for name, c in commands.items() if name != "gq_fc_neondot.c")


# ------------------------------------------------------------ x86_64 through LiteRT


def test_x86_64_flags_and_machine(x86_64_build):
    library, build_dir = x86_64_build
    assert elf_machine(library) == 62
    commands = compile_commands(build_dir)
    for flag in cbuild.source_flags("gq_fc_avx512.c", "x86_64"):
        assert flag in commands["gq_fc_avx512.c"].split()
    assert "GQ_HOST_CFLAGS_LEAKED" not in "".join(commands.values())


_RUN_MODEL = textwrap.dedent("""
    import sys
    import numpy as np
    from ai_edge_litert import interpreter as litert

    model, library, x_file, out_file = sys.argv[1:]
    x = np.load(x_file)
    outputs = {}
    for kernel in ("auto", "reference"):
        delegate = litert.load_delegate(library, {"kernel": kernel})
        interpreter = litert.Interpreter(model_path=model, experimental_delegates=[delegate], num_threads=1)
        interpreter.allocate_tensors()
        for name, y in interpreter.get_signature_runner()(x=x).items():
            outputs[kernel + "/" + name] = y
    np.savez(out_file, **outputs)
""")


def _run_model(model, library, x_file, out_file):
    # A fresh process per library: both are named libgq_delegate.so, and one
    # process could end up running the first one loaded for both.
    r = subprocess.run([sys.executable, "-c", _RUN_MODEL, str(model), str(library), str(x_file), str(out_file)],
                       check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(out_file) as f:
        return {k: f[k] for k in f.files}


def test_x86_64_build_runs_a_gq_model_like_the_setup_py_library(x86_64_build, tmp_path):
    from tests.support import fuzz_delegate as fz  # imports TensorFlow to convert the model

    data, truth = fz.build_gq_model([3, 70], [(3, 9, True, "RELU"), (4, 17, False, "NONE"), (1, 5, True, "NONE")],
                                    seed=11)
    model = tmp_path / "gq.tflite"
    model.write_bytes(data)
    x_file = tmp_path / "x.npy"
    np.save(x_file, (np.random.default_rng(0).normal(size=(3, 70)) * 0.3).astype(np.float32))
    ours = _run_model(model, x_file=x_file, library=x86_64_build[0], out_file=tmp_path / "ndk.npz")
    host = _run_model(model, x_file=x_file, library=HOST_LIBRARY, out_file=tmp_path / "host.npz")
    assert sorted(ours) == sorted(f"{k}/{n}" for k in ("auto", "reference") for n in truth)
    for name, y in host.items():
        assert np.any(y != 0), name
        np.testing.assert_array_equal(ours[name], y, err_msg=name)


# ------------------------------------------------------------ generated project


def _source_options(text: str) -> dict[str, str]:
    return {Path(m.group(1)).name: m.group(2)
            for m in re.finditer(r'set_source_files_properties\("([^"]+)" PROPERTIES COMPILE_OPTIONS "([^"]*)"\)',
                                 text)}


def test_cmake_project_per_abi():
    x86 = _source_options(ndk.cmake_lists("x86"))
    # The x86 kernel files compile for i386 too and need the same ISA flags.
    assert x86["gq_fc_avx2.c"].split(";")[:2] == ["-mavx2", "-mfma"]
    arm32 = _source_options(ndk.cmake_lists("armeabi-v7a"))
    assert set(arm32.values()) == {"-fvisibility=default", "-fvisibility=hidden"}
    assert len(arm32) == len(cbuild.DELEGATE_SOURCES)
    with pytest.raises(BenchError, match=r"Expected --abi in arm64-v8a, .*Received 'mips'"):
        ndk.cmake_lists("mips")


def test_cmake_quoting_keeps_odd_paths_literal(tmp_path):
    text = ndk.cmake_lists("x86_64", root=tmp_path / 'a "b" $c;d')
    assert '"' + (tmp_path / 'a \\"b\\" \\$c\\;d').as_posix() + '/converters/delegate/gq_lstm.c"' in text


# ------------------------------------------------------------ finding the NDK and cmake


def test_no_ndk_says_what_was_checked_and_how_to_get_one(monkeypatch):
    with pytest.raises(BenchError) as e:
        ndk.find_ndk(environ={})
    message = str(e.value)
    for needed in ("No Android NDK found", "$ANDROID_NDK_HOME", "$ANDROID_NDK_ROOT", "$ANDROID_NDK",
                   "$ANDROID_HOME", "$ANDROID_SDK_ROOT", "developer.android.com/ndk", 'sdkmanager "ndk;',
                   "SDK Manager", "--ndk"):
        assert needed in message


def test_ndk_from_environment_and_sdk(tmp_path):
    sdk = tmp_path / "sdk"
    for version in ("9.1.0", "25.2.9519653", "27.0.12077973"):
        make_ndk(sdk / "ndk" / version)
    (sdk / "ndk" / "28.0.1").mkdir()  # an unfinished install: no toolchain file
    assert ndk.find_ndk(environ={"ANDROID_HOME": str(sdk)}) == (sdk / "ndk" / "27.0.12077973").resolve()
    assert ndk.find_ndk(environ={"ANDROID_SDK_ROOT": str(sdk)}).name == "27.0.12077973"
    explicit = sdk / "ndk" / "25.2.9519653"
    assert ndk.find_ndk(environ={"ANDROID_NDK_ROOT": str(explicit), "ANDROID_HOME": str(sdk)}) == explicit.resolve()
    assert ndk.find_ndk(explicit, environ={"ANDROID_NDK_HOME": "/nowhere"}) == explicit.resolve()
    with pytest.raises(BenchError, match=r"given by \$ANDROID_NDK_HOME does not exist.*/nowhere"):
        ndk.find_ndk(environ={"ANDROID_NDK_HOME": "/nowhere", "ANDROID_HOME": str(sdk)})
    with pytest.raises(BenchError, match=r"no NDK there"):
        ndk.find_ndk(environ={"ANDROID_HOME": str(tmp_path / "empty_sdk")})


def test_ndk_without_toolchain_file_says_what_was_expected(tmp_path):
    (tmp_path / "not_ndk").mkdir()
    expected = tmp_path / "not_ndk" / "build" / "cmake" / "android.toolchain.cmake"
    with pytest.raises(BenchError, match=re.escape(f"expected its CMake toolchain file at {expected}")):
        ndk.find_ndk(tmp_path / "not_ndk")
    with pytest.raises(BenchError, match=re.escape(f"expected a directory at {tmp_path / 'missing'}")):
        ndk.build_delegate(tmp_path / "missing", "arm64-v8a", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cmake_missing_says_how_to_install(monkeypatch, tmp_path):
    with pytest.raises(BenchError, match=r"--cmake .*no-such-cmake: expected a cmake executable"):
        ndk.find_cmake(tmp_path / "no-such-cmake")
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    monkeypatch.setitem(sys.modules, "cmake", None)  # the pip package cannot be imported
    with pytest.raises(BenchError, match=r"pip install cmake.*apt-get install cmake"):
        ndk.find_cmake()


def test_bad_arguments(standin_ndk, tmp_path):
    with pytest.raises(BenchError, match=r"Expected --api to be an Android API level"):
        ndk.build_delegate(standin_ndk, "arm64-v8a", tmp_path, api=0)
    with pytest.raises(BenchError, match=r"Expected --jobs >= 1. Received 0"):
        ndk.build_delegate(standin_ndk, "arm64-v8a", tmp_path, jobs=0)
    with pytest.raises(SystemExit):
        cli(["build-delegate", "--abi", "mips"])


# ------------------------------------------------------------ failures leave nothing behind


@pytest.fixture
def one_source(monkeypatch):
    """Builds of one small file (flexbuf.c), for tests about the build's plumbing."""
    monkeypatch.setattr(cbuild, "DELEGATE_SOURCES", (f"{cbuild.DELEGATE_DIR}/flexbuf.c",))


def test_compile_failure_reports_the_tail_and_keeps_the_build(tmp_path):
    cc = tmp_path / "broken-cc"
    cc.write_text("#!/bin/sh\n"
                  'for a in "$@"; do case "$a" in */converters/*.c) '
                  'echo "$a:1:1: error: simulated compiler failure" >&2; exit 1;; esac; done\n'
                  'exec gcc "$@"\n')
    cc.chmod(0o755)
    broken = make_ndk(tmp_path / "ndk", {"x86_64": str(cc)})
    out = tmp_path / "out"
    with pytest.raises(BenchError) as e:
        ndk.build_delegate(broken, "x86_64", out, log=lambda line: None)
    message = str(e.value)
    assert message.startswith("Building the delegate failed (cmake exit status ")
    assert "error: simulated compiler failure" in message
    assert len(message.splitlines()) < 40
    kept = Path(re.search(r"kept for inspection: (.+) \(full log: ", message).group(1))
    try:
        assert (kept / "build.log").is_file() and (kept / "project" / "CMakeLists.txt").is_file()
    finally:
        shutil.rmtree(kept)
    assert not out.exists()


def test_configure_failure_reports_the_tail(standin_ndk, tmp_path):
    # The stand-in has no compiler for x86: its toolchain file stops CMake.
    with pytest.raises(BenchError, match=r"(?s)^Configuring the delegate build failed.*"
                                         r"stand-in NDK: no compiler for ANDROID_ABI=x86"):
        ndk.build_delegate(standin_ndk, "x86", tmp_path / "out", build_dir=tmp_path / "bd", log=lambda line: None)
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "bd" / "build.log").is_file()


def test_wrong_machine_is_refused_and_the_old_library_kept(one_source, tmp_path):
    # A toolchain file that ignores the ABI: an x86-64 library for arm64-v8a.
    wrong = make_ndk(tmp_path / "ndk", {"arm64-v8a": "gcc"})
    out = tmp_path / "out"
    out.mkdir()
    (out / ndk.LIBRARY).write_bytes(b"previous build")
    with pytest.raises(BenchError, match=r"e_machine 62; expected e_machine 183 \(arm64-v8a\)"):
        ndk.build_delegate(wrong, "arm64-v8a", out, build_dir=tmp_path / "bd", log=lambda line: None)
    assert sorted(p.name for p in out.iterdir()) == [ndk.LIBRARY]
    assert (out / ndk.LIBRARY).read_bytes() == b"previous build"


def test_reused_build_directory_follows_the_abi(one_source, standin_ndk, tmp_path):
    ensure_debian_packages(ARM_PACKAGES)
    build_dir = tmp_path / "bd"
    x86 = ndk.build_delegate(standin_ndk, "x86_64", tmp_path / "x86", build_dir=build_dir, log=lambda line: None)
    # Same settings again: an incremental build with nothing to compile.
    ndk.build_delegate(standin_ndk, "x86_64", tmp_path / "x86", build_dir=build_dir, log=lambda line: None)
    assert ".c.o" not in (build_dir / "build.log").read_text()
    # Another ABI in the same folder: CMake's cached compiler must not be reused.
    arm = ndk.build_delegate(standin_ndk, "arm64-v8a", tmp_path / "arm", build_dir=build_dir, log=lambda line: None)
    assert (elf_machine(x86), elf_machine(arm)) == (62, 183)


# ------------------------------------------------------------ command line


def test_cli_defaults_from_environment(one_source, standin_ndk, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for var in ndk.NDK_ENV + ndk.SDK_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ANDROID_NDK_HOME", str(standin_ndk))
    assert cli(["build-delegate", "--abi", "x86_64", "--jobs", "1"]) == 0
    library = tmp_path / "build" / "android" / "x86_64" / "libgq_delegate.so"
    assert elf_machine(library) == 62
    out = capsys.readouterr().out
    assert "building: 1 C files, 1 job(s)" in out
    assert f"done: {Path('build/android/x86_64/libgq_delegate.so')} (" in out
    assert "--external_delegate_path=/data/local/tmp/libgq_delegate.so" in out


def test_main_reports_errors_with_status_2(tmp_path, monkeypatch, capsys):
    pytest.importorskip("android_bench.benchmark_output")  # imported by run.py, beside this command
    from android_bench.__main__ import main

    for var in ndk.NDK_ENV + ndk.SDK_ENV:
        monkeypatch.delenv(var, raising=False)
    assert main(["build-delegate", "--abi", "arm64-v8a"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No Android NDK found.") and "developer.android.com/ndk" in err
    assert main(["build-delegate", "--ndk", str(tmp_path)]) == 2
    assert "android.toolchain.cmake" in capsys.readouterr().err
