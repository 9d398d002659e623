"""Debian packages that some tests need (the aarch64 cross toolchain, qemu).

CI starts from a clean machine, and the project installs everything it needs
from its own files: a test that needs such a tool calls
``ensure_debian_packages`` first. It is the shipped installer
(``gq_speech.debian``: as root, apt-get installs what is missing) with its
failure turned into a test failure that prints the exact command to run,
never a skip.
"""

from __future__ import annotations

import pytest

from gq_speech.debian import DebianPackageError
from gq_speech.debian import ensure_debian_packages as _ensure


def ensure_debian_packages(packages: dict[str, str]) -> None:
    """Makes sure every key of ``packages`` is there, installing its package.

    Keys are command names looked up on PATH, or absolute paths of files
    (for packages without a command, such as a cross libc); values are the
    Debian packages that provide them.
    """
    try:
        _ensure(packages, why="the tests", log=lambda line: None)
    except DebianPackageError as e:
        pytest.fail(str(e), pytrace=False)


# The aarch64 cross compiler, qemu, and the cross libc (headers, libc.a for
# -static: only recommended by gcc), as {command or file: package}.
AARCH64_PACKAGES = {
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "qemu-aarch64-static": "qemu-user-static",
    "/usr/aarch64-linux-gnu/lib/libc.a": "libc6-dev-arm64-cross",
}
