"""Debian packages that some tests need (the aarch64 cross toolchain, qemu).

CI starts from a clean machine, and the project installs everything it needs
from its own files: a test that needs such a tool calls
``ensure_debian_packages`` first. As root it installs what is missing with
apt-get (``apt-get update`` once per session); otherwise, or when apt fails,
the test fails with the exact command to run, never skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
_updated = False  # apt-get update has run in this session


def _present(what: str) -> bool:
    """A command on PATH, or (an absolute path) a file that exists."""
    if os.path.isabs(what):
        return os.path.exists(what)
    return shutil.which(what) is not None


def _install_command(packages: list[str]) -> str:
    return "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y -q " + " ".join(packages)


def _apt(args: list[str], what: str, packages: list[str]) -> None:
    try:
        r = subprocess.run(
            ["apt-get", *args], check=False, capture_output=True, text=True,
            env=dict(os.environ, **_APT_ENV), timeout=1200,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.fail(f"{what} failed ({e}); run as root: {_install_command(packages)}", pytrace=False)
    if r.returncode != 0:
        pytest.fail(
            f"{what} failed (exit {r.returncode}); run as root: {_install_command(packages)}\n"
            f"{(r.stdout + r.stderr)[-2000:]}",
            pytrace=False,
        )


def ensure_debian_packages(packages: dict[str, str]) -> None:
    """Makes sure every key of ``packages`` is there, installing its package.

    Keys are command names looked up on PATH, or absolute paths of files
    (for packages without a command, such as a cross libc); values are the
    Debian packages that provide them.
    """
    global _updated
    missing = {what: pkg for what, pkg in packages.items() if not _present(what)}
    if not missing:
        return
    pkgs = sorted(set(missing.values()))
    names = ", ".join(sorted(missing))
    if shutil.which("apt-get") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.fail(
            f"missing {names} (Debian packages {' '.join(pkgs)}); install them as root with:\n"
            f"  {_install_command(pkgs)}",
            pytrace=False,
        )
    if not _updated:
        _apt(["update", "-q"], "apt-get update", pkgs)
        _updated = True
    _apt(["install", "-y", "-q", *pkgs], f"apt-get install {' '.join(pkgs)}", pkgs)
    still = sorted(what for what in missing if not _present(what))
    if still:
        pytest.fail(
            f"installed {' '.join(pkgs)} but {', '.join(still)} is still missing; "
            f"check with: {_install_command(pkgs)}",
            pytrace=False,
        )
