"""Debian packages the speech tools need (espeak-ng, flite, sox), installed on first use.

The project installs what it needs from its own code, so a clean machine
works without a manual setup step: as root, :func:`ensure_debian_packages`
runs ``apt-get update`` (once per process) and ``apt-get install`` for the
missing packages, printing what it does. Without root or apt, or when apt
fails, it raises :class:`DebianPackageError` with the exact command to run.

Example:
  >>> ensure_debian_packages({"sox": "sox"}, why="audio conversion")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping

__all__ = ["DebianPackageError", "ensure_debian_packages", "install_command"]

_updated = False  # apt-get update has run in this process


class DebianPackageError(RuntimeError):
    """A needed Debian package is missing and could not be installed."""


def install_command(packages: Iterable[str]) -> str:
    """The shell command that installs ``packages`` (what the errors print)."""
    return "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y -q " + " ".join(sorted(packages))


def _present(what: str) -> bool:
    if os.path.isabs(what):
        return os.path.exists(what)
    return shutil.which(what) is not None


def _apt(args: list[str], packages: list[str], log: Callable[[str], None]) -> None:
    log(f"  $ apt-get {' '.join(args)}")
    try:
        r = subprocess.run(["apt-get", *args], capture_output=True, text=True, timeout=1800, check=False,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DebianPackageError(f"apt-get {args[0]} failed ({e}); run as root: {install_command(packages)}") from None
    if r.returncode != 0:
        raise DebianPackageError(f"apt-get {args[0]} failed (exit {r.returncode}); run as root: "
                                 f"{install_command(packages)}\n{(r.stdout + r.stderr)[-2000:]}")


def ensure_debian_packages(packages: Mapping[str, str] | Iterable[str], why: str,
                           log: Callable[[str], None] = print) -> None:
    """Makes sure the given commands exist, installing their Debian packages if needed.

    Args:
      packages: ``{command: package}`` (a command on PATH, or an absolute
        file path, and the package that provides it), or package names that
        are also their command names.
      why: what needs them (goes into the messages).
      log: where progress lines go.

    Raises:
      DebianPackageError: something is missing and this process is not root,
        has no apt-get, or apt-get failed; the message has the command to run.
    """
    global _updated
    if not isinstance(packages, Mapping):
        packages = {p: p for p in packages}
    missing = {what: pkg for what, pkg in packages.items() if not _present(what)}
    if not missing:
        return
    pkgs = sorted(set(missing.values()))
    names = ", ".join(sorted(missing))
    if shutil.which("apt-get") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise DebianPackageError(f"{why} needs {names} (Debian packages {' '.join(pkgs)}), which are missing; "
                                 f"install them as root with:\n  {install_command(pkgs)}")
    log(f"{why} needs {names}: installing Debian packages {' '.join(pkgs)}")
    if not _updated:
        _apt(["update", "-q"], pkgs, log)
        _updated = True
    _apt(["install", "-y", "-q", *pkgs], pkgs, log)
    still = sorted(what for what in missing if not _present(what))
    if still:
        raise DebianPackageError(f"installed {' '.join(pkgs)} but {', '.join(still)} is still missing; "
                                 f"check with: {install_command(pkgs)}")
    log(f"  installed {' '.join(pkgs)}")
