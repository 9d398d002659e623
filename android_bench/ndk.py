"""``build-delegate``: our delegate library for Android, built with the NDK.

The library is the one ``setup.py`` builds for this machine
(``converters/libgq_delegate.so``): the same sources, flags and exported
symbols, all taken from ``converters/cbuild.py``. It is compiled by the
user's Android NDK through its CMake toolchain file, so it can be pushed to
a phone and given to TFLite's stock ``benchmark_model`` with
``--external_delegate_path``.

A small CMake project is generated into a build directory (a temporary one
unless ``--build-dir`` is given), configured for one ABI and API level, and
built. The library is checked (an ELF file for that ABI's machine) and only
then copied into the output folder, under a temporary name renamed into
place, so a failed build never leaves a half-written library behind.

Example:
  $ python -m android_bench build-delegate --ndk ~/Android/Sdk/ndk/27.2.12479018 --abi arm64-v8a
  $ adb push build/android/arm64-v8a/libgq_delegate.so /data/local/tmp/
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from android_bench.errors import BenchError
from android_bench.recognizer import RUNNER_FLAGS, RUNNER_SOURCES
from android_bench.targets import ABI_MACHINES, elf_machine
from converters import cbuild

__all__ = ["ABIS", "DEFAULT_API", "LIBRARY", "add_parser", "build_delegate", "cmake_lists", "find_cmake", "find_ndk"]

ABIS = ("arm64-v8a", "armeabi-v7a", "x86_64", "x86")
DEFAULT_API = 24
LIBRARY = "libgq_delegate.so"
RUNNER = "gq_stream"  # the native streaming runner, built beside the library
NDK_ENV = ("ANDROID_NDK_HOME", "ANDROID_NDK_ROOT", "ANDROID_NDK")
SDK_ENV = ("ANDROID_HOME", "ANDROID_SDK_ROOT")
TOOLCHAIN_FILE = "build/cmake/android.toolchain.cmake"

# The architecture whose instruction-set flags (cbuild.source_flags) each
# ABI's files get. cbuild names architectures as `cc -dumpmachine` does.
_FLAG_ARCH = {"arm64-v8a": "aarch64", "armeabi-v7a": "arm", "x86_64": "x86_64", "x86": "i686"}

# Android 15 devices may use 16 KB pages; a library aligned for 4 KB pages
# does not load there.
_LINK_OPTIONS = ("-Wl,-z,max-page-size=16384",)

_ROOT = Path(__file__).resolve().parents[1]
_TAIL_LINES = 30
# Host compiler settings would leak into the Android build (CMake reads
# them at the first configure); the toolchain file alone decides.
_HOST_BUILD_ENV = ("CC", "CFLAGS", "LDFLAGS", "CPPFLAGS")

_GET_NDK = (
    "Install one with Android Studio (SDK Manager > SDK Tools > NDK (Side by side)), "
    'with the command-line tools (`sdkmanager "ndk;27.2.12479018"`), or download it from '
    "https://developer.android.com/ndk/downloads; then pass --ndk PATH or set ANDROID_NDK_HOME."
)


def _has_toolchain(ndk: Path) -> bool:
    return (ndk / TOOLCHAIN_FILE).is_file()


def _check_ndk(ndk: Path, source: str) -> Path:
    ndk = ndk.expanduser()
    if not ndk.is_dir():
        raise BenchError(f"The Android NDK given by {source} does not exist: expected a directory at {ndk}. "
                         + _GET_NDK)
    if not _has_toolchain(ndk):
        raise BenchError(
            f"{ndk} (from {source}) is not an Android NDK: expected its CMake toolchain file at "
            f"{ndk / TOOLCHAIN_FILE}. Pass the NDK's own folder, e.g. $ANDROID_HOME/ndk/<version> "
            "(NDK r19 or newer).")
    return ndk.resolve()


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name))


def find_ndk(ndk: str | os.PathLike | None = None, environ=None) -> Path:
    """The Android NDK to build with.

    In order: ``ndk`` when given; the first of ``$ANDROID_NDK_HOME``,
    ``$ANDROID_NDK_ROOT``, ``$ANDROID_NDK`` that is set; else the newest
    version folder under ``$ANDROID_HOME/ndk`` or ``$ANDROID_SDK_ROOT/ndk``
    (then their legacy ``ndk-bundle``).

    Args:
      ndk: an explicit NDK folder (``--ndk``), or None to search.
      environ: the environment to read (default ``os.environ``).

    Returns:
      The NDK folder (it holds ``build/cmake/android.toolchain.cmake``).

    Raises:
      BenchError: the given or configured NDK is missing or not an NDK, or
        none was found; the message lists what was checked and how to get one.
    """
    env = os.environ if environ is None else environ
    if ndk is not None:
        return _check_ndk(Path(ndk), "--ndk")
    for var in NDK_ENV:
        if env.get(var):
            return _check_ndk(Path(env[var]), f"${var}")
    checked = [f"${v} (not set)" for v in NDK_ENV]
    for var in SDK_ENV:
        if not env.get(var):
            checked.append(f"${var}/ndk (${var} not set)")
            continue
        sdk = Path(env[var]).expanduser()
        versions = sorted((d for d in (sdk / "ndk").glob("*") if _has_toolchain(d)),
                          key=lambda d: _version_key(d.name), reverse=True)
        if versions:
            return versions[0].resolve()
        if _has_toolchain(sdk / "ndk-bundle"):
            return (sdk / "ndk-bundle").resolve()
        checked.append(f"{sdk / 'ndk'}/<version> and {sdk / 'ndk-bundle'} (no NDK there)")
    raise BenchError("No Android NDK found. Checked: " + "; ".join(checked) + ". " + _GET_NDK)


def _ndk_version(ndk: Path) -> str | None:
    try:
        text = (ndk / "source.properties").read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r"^\s*Pkg\.Revision\s*=\s*(\S+)", text, re.MULTILINE)
    return m.group(1) if m else None


def find_cmake(cmake: str | os.PathLike | None = None) -> str:
    """The cmake executable: ``cmake`` when given, else the first of cmake on
    PATH, next to this Python (a virtualenv's bin), in the ``cmake`` pip package.

    Raises:
      BenchError: not found, with how to install it.
    """
    if cmake is not None:
        found = shutil.which(os.fspath(Path(cmake).expanduser()))
        if found is None:
            raise BenchError(f"--cmake {cmake}: expected a cmake executable there (or a name on PATH), "
                             "found none.")
        return found
    found = shutil.which("cmake") or shutil.which("cmake", path=str(Path(sys.executable).parent))
    if found:
        return found
    try:
        import cmake as cmake_package  # the PyPI `cmake` distribution

        found = shutil.which("cmake", path=cmake_package.CMAKE_BIN_DIR)
    except (ImportError, AttributeError):
        found = None
    if found:
        return found
    raise BenchError("cmake was not found (on PATH, next to this Python, or as the `cmake` pip package). "
                     "Install it with `pip install cmake` (or `apt-get install cmake`), or pass --cmake PATH.")


def _find_ninja() -> str | None:
    found = shutil.which("ninja") or shutil.which("ninja", path=str(Path(sys.executable).parent))
    if found:
        return found
    try:
        import ninja as ninja_package  # the PyPI `ninja` distribution

        return shutil.which("ninja", path=ninja_package.BIN_DIR)
    except (ImportError, AttributeError):
        return None


def _generator() -> list[str]:
    """CMake generator arguments: Ninja when there is one, else Makefiles."""
    ninja = _find_ninja()
    if ninja:
        return ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    if os.name != "nt" and shutil.which("make"):
        return ["-G", "Unix Makefiles"]
    raise BenchError("Neither ninja nor make was found to run the build. Install ninja with "
                     "`pip install ninja` (or `apt-get install ninja-build`).")


def _escape(text: str) -> str:
    for ch in ("\\", '"', "$", ";"):
        text = text.replace(ch, "\\" + ch)
    return text


def _quote(text: str) -> str:
    """A CMake quoted argument holding ``text`` literally."""
    return f'"{_escape(text)}"'


def _quote_list(items) -> str:
    """A CMake quoted argument holding a list (``;``-separated) of literal items."""
    return '"' + ";".join(_escape(i) for i in items) + '"'


def _source_options(src: str, abi: str) -> list[str]:
    """Per-file flags: the instruction sets (cbuild) and the symbol visibility.

    Visibility mirrors setup.py: everything hidden except the kernels, whose
    API (gq_fc.h) is the library's second public interface.
    """
    options = list(cbuild.source_flags(src, _FLAG_ARCH[abi]))
    options.append("-fvisibility=default" if src.startswith(cbuild.KERNEL_DIR + "/") else "-fvisibility=hidden")
    return options


def cmake_lists(abi: str, root: str | os.PathLike = _ROOT) -> str:
    """The text of the generated ``CMakeLists.txt`` for one ABI.

    Sources are absolute paths under ``root`` (the gq-tf source tree). The
    compile options are cbuild's ``C_FLAGS`` without ``-Werror``: NDK clang
    versions differ in their warnings, and a new warning must not break a
    user's build (the project's own builds keep ``-Werror``).
    """
    if abi not in ABIS:
        raise BenchError(f"Expected --abi in {', '.join(ABIS)}. Received {abi!r}.")
    root = Path(root).resolve()
    flags = [f for f in cbuild.C_FLAGS if f != "-Werror" and not f.startswith("-Werror=")]
    lines = [
        "# Generated by `python -m android_bench build-delegate` (android_bench/ndk.py).",
        "cmake_minimum_required(VERSION 3.13)",
        "project(gq_delegate C)",
        "set(CMAKE_EXPORT_COMPILE_COMMANDS ON)",
        "add_library(gq_delegate SHARED",
        *(f"  {_quote((root / src).as_posix())}" for src in cbuild.DELEGATE_SOURCES),
        ")",
        "target_compile_options(gq_delegate PRIVATE " + " ".join(_quote(f) for f in flags) + ")",
    ]
    for src in cbuild.DELEGATE_SOURCES:
        lines.append(f"set_source_files_properties({_quote((root / src).as_posix())} "
                     f"PROPERTIES COMPILE_OPTIONS {_quote_list(_source_options(src, abi))})")
    lines += [
        "target_link_options(gq_delegate PRIVATE " + " ".join(_quote(o) for o in _LINK_OPTIONS) + ")",
        # The worker threads (gq_threads.c); in libc on Android and newer glibc.
        "set(THREADS_PREFER_PTHREAD_FLAG ON)",
        "find_package(Threads REQUIRED)",
        "target_link_libraries(gq_delegate PRIVATE Threads::Threads)",
        # The native streaming runner (android_bench/recognizer.py), beside the library.
        "add_executable(gq_stream",
        *(f"  {_quote((root / src).as_posix())}" for src in RUNNER_SOURCES),
        ")",
        "target_compile_options(gq_stream PRIVATE "
        + " ".join(_quote(f) for f in RUNNER_FLAGS if f != "-Werror") + ")",
        "target_link_libraries(gq_stream PRIVATE ${CMAKE_DL_LIBS} m)",
        "",
    ]
    return "\n".join(lines)


def _write_if_changed(path: Path, text: str) -> None:
    # An unchanged file keeps its time stamp, so a reused build directory
    # is not reconfigured for nothing.
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def _tail(log_file: Path, n: int = _TAIL_LINES) -> str:
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return "(no output was captured)"
    return "\n".join(lines[-n:])


def _run(cmd: list[str], log_file: Path, what: str, work: Path, env: dict) -> None:
    with open(log_file, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        try:
            r = subprocess.run(cmd, check=False, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env=env)
        except OSError as e:
            raise BenchError(f"Could not run {cmd[0]}: {e}. The build directory is kept: {work}") from None
    if r.returncode != 0:
        raise BenchError(
            f"{what} failed (cmake exit status {r.returncode}). Last lines of its output:\n"
            f"{_tail(log_file)}\n"
            f"The build directory is kept for inspection: {work} (full log: {log_file})")


def build_delegate(ndk: Path, abi: str, out: Path, api: int = DEFAULT_API, cmake: str | None = None,
                   jobs: int | None = None, log=print, build_dir: Path | None = None) -> Path:
    """Builds ``libgq_delegate.so`` for an Android ABI with the NDK's CMake toolchain.

    Args:
      ndk: the NDK folder (see :func:`find_ndk`).
      abi: one of :data:`ABIS`.
      out: folder the library is written to (created if needed).
      api: minimum Android API level (``ANDROID_PLATFORM=android-<api>``).
      cmake: the cmake executable (default: :func:`find_cmake`).
      jobs: parallel compile jobs (default: the number of CPUs).
      log: called with each progress line.
      build_dir: where to generate and build, kept afterwards (a reused
        folder builds incrementally). Default: a temporary folder, removed
        after a successful build and kept after a failed one.

    Returns:
      The path of the library, ``out / "libgq_delegate.so"``.

    Raises:
      BenchError: bad ABI or API level, no NDK toolchain file, no cmake or
        build tool, the C sources missing, a failed configure or build (with
        the end of its output and the kept build directory), or a library
        that is not an ELF file for the ABI.

    Example:
      >>> build_delegate(find_ndk(), "arm64-v8a", Path("build/android/arm64-v8a"))
      PosixPath('build/android/arm64-v8a/libgq_delegate.so')
    """
    if abi not in ABIS:
        raise BenchError(f"Expected --abi in {', '.join(ABIS)}. Received {abi!r}.")
    if isinstance(api, bool) or not isinstance(api, int) or api < 1:
        raise BenchError(f"Expected --api to be an Android API level such as {DEFAULT_API}. Received {api!r}.")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise BenchError(f"Expected --jobs >= 1. Received {jobs!r}.")
    ndk = _check_ndk(Path(ndk), "--ndk")
    missing = [src for src in cbuild.DELEGATE_SOURCES + cbuild.HEADERS if not (_ROOT / src).is_file()]
    if missing:
        raise BenchError(f"The delegate's C sources are not under {_ROOT} (missing: {', '.join(missing[:3])}"
                         f"{', ...' if len(missing) > 3 else ''}). build-delegate runs from the gq-tf source "
                         "tree: clone it and `pip install -e .` there.")
    cmake = find_cmake(cmake)
    generator = _generator()
    jobs = jobs or os.cpu_count() or 1
    out = Path(out)

    temporary = build_dir is None
    work = Path(tempfile.mkdtemp(prefix=f"gq_delegate_{abi}_")) if temporary else Path(build_dir).resolve()
    source_dir, binary_dir, log_file = work / "project", work / "build", work / "build.log"
    source_dir.mkdir(parents=True, exist_ok=True)
    # A CMake cache remembers its toolchain, ABI and generator: a reused
    # build directory configured differently starts afresh.
    settings = {"ndk": str(ndk), "abi": abi, "api": api, "cmake": cmake, "generator": generator}
    stamp = work / "settings.json"
    try:
        previous = json.loads(stamp.read_text()) if stamp.is_file() else settings
    except (OSError, ValueError):
        previous = None
    if previous != settings:
        shutil.rmtree(binary_dir, ignore_errors=True)
    stamp.write_text(json.dumps(settings, indent=1))
    _write_if_changed(source_dir / "CMakeLists.txt", cmake_lists(abi))
    log_file.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in _HOST_BUILD_ENV}

    version = _ndk_version(ndk)
    log(f"configuring: NDK {version + ' ' if version else ''}at {ndk}, ABI {abi}, android-{api}, "
        f"{generator[1]} (build directory {work})")
    _run([cmake, "-S", str(source_dir), "-B", str(binary_dir), *generator,
          f"-DCMAKE_TOOLCHAIN_FILE={ndk / TOOLCHAIN_FILE}", f"-DANDROID_ABI={abi}",
          f"-DANDROID_PLATFORM=android-{api}", "-DCMAKE_BUILD_TYPE=Release",
          "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"], log_file, "Configuring the delegate build", work, env)
    log(f"building: {len(cbuild.DELEGATE_SOURCES)} C files, {jobs} job(s)")
    _run([cmake, "--build", str(binary_dir), "-j", str(jobs)], log_file, "Building the delegate", work, env)

    built = binary_dir / LIBRARY
    if not built.is_file():
        raise BenchError(f"The build succeeded but {built} is missing. The build directory is kept: {work}")
    machine = elf_machine(built)
    if machine != ABI_MACHINES[abi]:
        found = "not an ELF file" if machine is None else f"an ELF file for e_machine {machine}"
        raise BenchError(f"The built library {built} is {found}; expected e_machine {ABI_MACHINES[abi]} "
                         f"({abi}). Is {ndk / TOOLCHAIN_FILE} an NDK toolchain file honouring ANDROID_ABI? "
                         f"The build directory is kept: {work}")

    runner = binary_dir / RUNNER
    if elf_machine(runner) != ABI_MACHINES[abi]:
        raise BenchError(f"The build succeeded but the runner {runner} is missing or not built for {abi}. "
                         f"The build directory is kept: {work}")
    out.mkdir(parents=True, exist_ok=True)
    target = out / LIBRARY
    for built_file, name in ((built, LIBRARY), (runner, RUNNER)):
        partial = out / f".{name}.{os.getpid()}.partial"
        try:
            shutil.copy2(built_file, partial)
            os.replace(partial, out / name)
        finally:
            if partial.exists():
                partial.unlink()
    if temporary:
        shutil.rmtree(work, ignore_errors=True)
    size = target.stat().st_size
    log(f"done: {target} ({size / 1024:.0f} KiB, ELF e_machine {machine} = {abi})")
    return target


def add_parser(sub):
    p = sub.add_parser(
        "build-delegate",
        help="build our delegate (libgq_delegate.so) for Android with the NDK",
        description="Builds libgq_delegate.so for an Android ABI with the NDK's CMake toolchain, "
                    "for TFLite's benchmark_model (--external_delegate_path) on a phone.",
        epilog="Exit status: 0 built, 2 missing NDK or tools, or the build failed (its output's end is shown).",
    )
    p.add_argument("--ndk", metavar="PATH",
                   help="Android NDK folder (default: $ANDROID_NDK_HOME, $ANDROID_NDK_ROOT, $ANDROID_NDK, "
                        "else the newest $ANDROID_HOME/ndk/<version> or $ANDROID_SDK_ROOT/ndk/<version>)")
    p.add_argument("--abi", choices=ABIS, default="arm64-v8a", help="Android ABI (default: arm64-v8a)")
    p.add_argument("--api", type=int, default=DEFAULT_API,
                   help=f"minimum Android API level (default: {DEFAULT_API})")
    p.add_argument("--out", metavar="DIR",
                   help=f"output folder (default: build/android/<abi>); the library is DIR/{LIBRARY}")
    p.add_argument("--cmake", metavar="PATH",
                   help="cmake executable (default: on PATH, next to this Python, or the cmake pip package)")
    p.add_argument("--jobs", "-j", type=int, default=None, help="parallel compile jobs (default: CPU count)")
    p.add_argument("--build-dir", metavar="DIR",
                   help="build here and keep it (incremental rebuilds, compile_commands.json); "
                        "default: a temporary folder, removed after success")
    p.set_defaults(func=main)
    return p


def main(args) -> int:
    ndk = find_ndk(args.ndk)
    out = Path(args.out) if args.out else Path("build") / "android" / args.abi
    path = build_delegate(ndk, args.abi, out, api=args.api, cmake=args.cmake, jobs=args.jobs,
                          build_dir=Path(args.build_dir) if args.build_dir else None)
    remote = f"/data/local/tmp/{LIBRARY}"
    print(f"use it: adb push {shlex.quote(str(path))} {remote}, then benchmark_model "
          f"--external_delegate_path={remote}, or `python -m android_bench run --delegate {shlex.quote(str(path))}`")
    return 0
