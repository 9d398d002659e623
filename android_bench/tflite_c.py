"""The TFLite C library for the native streaming runner on Linux: Debian's, fetched and unpacked.

Debian unstable builds TensorFlow Lite 2.14 (``libtensorflow-lite2.14.1``,
amd64 and arm64) with its C API exported. It needs a newer C and C++
runtime than this machine's Debian, so it is not installed: its package and
everything it depends on are downloaded with ``apt-get download`` against a
private package list (nothing of the system's apt state is touched) and
unpacked with ``dpkg -x`` into a folder of its own, a *sysroot*, whose own
dynamic loader runs the runner (``Sysroot.command``): directly on the host,
under ``qemu-aarch64-static -L SYSROOT`` for arm64.

Cached in ``~/.cache/gq-tf/tflite-c/<arch>`` (or ``$GQ_TF_CACHE``): fetched
once (about 5 MB, seconds). When the package registry cannot be reached,
:class:`FetchError` says what failed and how to retry.

CLI: ``python -m android_bench.tflite_c [--arch amd64|arm64]`` prints the sysroot.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["PACKAGE", "FetchError", "Sysroot", "fetch", "host_arch"]

PACKAGE = "libtensorflow-lite2.14.1"
LIBRARY = "libtensorflow-lite.so.2.14.1"
MIRROR = "http://deb.debian.org/debian"
SUITE = "sid"
TRIPLETS = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
LOADERS = {"amd64": "ld-linux-x86-64.so.2", "arm64": "ld-linux-aarch64.so.1"}


class FetchError(RuntimeError):
    """Debian's TFLite C library could not be downloaded or unpacked."""


@dataclasses.dataclass(frozen=True)
class Sysroot:
    """An unpacked Debian root holding the TFLite C library and its runtime."""

    root: Path
    arch: str

    @property
    def lib_dir(self) -> Path:
        return self.root / "usr" / "lib" / TRIPLETS[self.arch]

    @property
    def library(self) -> Path:
        """The TFLite C library (``--tflite`` of the runner)."""
        return self.lib_dir / LIBRARY

    @property
    def loader(self) -> Path:
        return self.lib_dir / LOADERS[self.arch]

    def command(self, program, *args, qemu_cpu: str = "max") -> list[str]:
        """The command that runs ``program`` (built for this sysroot's arch) with its libraries."""
        if self.arch == host_arch():
            return [str(self.loader), "--library-path", str(self.lib_dir), str(program), *map(str, args)]
        if self.arch == "arm64":
            qemu = shutil.which("qemu-aarch64-static")
            if qemu is None:
                raise FetchError("Expected qemu-aarch64-static to run arm64 programs on this host. Received none "
                                 "on PATH: apt-get install qemu-user-static.")
            return [qemu, "-cpu", qemu_cpu, "-L", str(self.root), "-E", f"LD_LIBRARY_PATH={self.lib_dir}",
                    str(program), *map(str, args)]
        raise FetchError(f"Expected an {host_arch()} or arm64 sysroot to run here. Received {self.arch}.")


def host_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


def _cache(arch: str) -> Path:
    base = os.environ.get("GQ_TF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gq-tf")
    return Path(base) / "tflite-c" / arch


def _apt(args: list[str], state: Path, cwd=None, timeout=600) -> str:
    opts = ["-o", f"Dir::Etc::SourceList={state / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={state / 'lists'}", "-o", f"Dir::Cache={state / 'cache'}",
            "-o", "Dir::State::Status=/dev/null", "-o", "Debug::NoLocking=1",
            "-o", "APT::Architectures::=amd64", "-o", "APT::Architectures::=arm64"]
    tool = "apt-cache" if args[0] in ("depends", "show") else "apt-get"
    try:
        r = subprocess.run([tool, *opts, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                           check=False)
    except FileNotFoundError:
        raise FetchError(f"Expected {tool} (Debian's package tools) to fetch {PACKAGE}. Received none on PATH.") \
            from None
    except subprocess.TimeoutExpired:
        raise FetchError(f"Expected `{tool} {args[0]}` to finish within {timeout} s; it did not (a slow or "
                         f"unreachable {MIRROR}?). Run again to retry.") from None
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise FetchError(f"Expected `{tool} {' '.join(args[:2])}` against {MIRROR} {SUITE} to succeed. Received "
                         f"exit {r.returncode}: {' / '.join(tail)}. Is the registry reachable? Run again to retry.")
    return r.stdout


def fetch(arch: str | None = None, log=print) -> Sysroot:
    """The sysroot with Debian's TFLite C library for ``arch`` (default: this host's), fetched if needed.

    Raises:
      ValueError: an architecture Debian does not build it for here.
      FetchError: the download or the unpacking failed (nothing half-made is left in the cache).
    """
    arch = arch or host_arch()
    if arch not in TRIPLETS:
        raise ValueError(f"Expected an architecture among {sorted(TRIPLETS)}. Received {arch!r}.")
    root = _cache(arch)
    done = Sysroot(root, arch)
    if done.library.exists() and done.loader.exists() and (root / ".complete").exists():
        return done
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{arch}-") as tmp:
        tmp = Path(tmp)
        state = tmp / "apt"
        for sub in ("lists/partial", "cache/archives/partial"):
            (state / sub).mkdir(parents=True)
        (state / "sources.list").write_text(f"deb [arch=amd64,arm64 trusted=yes] {MIRROR} {SUITE} main\n")
        log(f"tflite-c: fetching Debian {SUITE}'s {PACKAGE} ({arch}) and its runtime from {MIRROR}")
        _apt(["update"], state)
        deps = _apt(["depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks",
                     "--no-replaces", "--no-enhances", f"{PACKAGE}:{arch}"], state)
        names = sorted({line.strip().split(":")[0] for line in deps.splitlines()
                        if line and not line.startswith((" ", "<"))})
        if PACKAGE not in names:
            raise FetchError(f"Expected Debian {SUITE} to have {PACKAGE} for {arch}. Received none (it may have "
                             "moved to a newer version: the runner needs the TFLite C API of any version).")
        debs = tmp / "debs"
        debs.mkdir()
        _apt(["download", *(f"{n}:{arch}" for n in names)], state, cwd=debs)
        unpacked = tmp / "root"
        for deb in sorted(debs.glob("*.deb")):
            r = subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise FetchError(f"Expected dpkg -x to unpack {deb.name}. Received exit {r.returncode}: "
                                 f"{r.stderr.strip()[-300:]}")
        made = Sysroot(unpacked, arch)
        if not made.library.exists() or not made.loader.exists():
            raise FetchError(f"Expected {LIBRARY} and {LOADERS[arch]} in the unpacked packages ({', '.join(names)}). "
                             "Received neither or one.")
        # qemu -L resolves the program's interpreter path inside the root.
        (unpacked / "lib").mkdir(exist_ok=True)
        link = unpacked / "lib" / LOADERS[arch]
        if not link.exists():
            link.symlink_to(Path("..") / "usr" / "lib" / TRIPLETS[arch] / LOADERS[arch])
        (unpacked / ".complete").write_text(" ".join(names) + "\n")
        if root.exists():
            shutil.rmtree(root)
        unpacked.rename(root)
    log(f"tflite-c: {done.library} ({sum(f.stat().st_size for f in root.rglob('*') if f.is_file()) >> 20} MB)")
    return done


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m android_bench.tflite_c", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=sorted(TRIPLETS), default=None, help="default: this host's")
    args = p.parse_args(argv)
    try:
        root = fetch(args.arch, log=lambda m: print(m, file=sys.stderr))
    except (FetchError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(root.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
