"""Writing files all at once, for every package of the project.

A file is written to a temporary next to it (``.<name>.tmp-<pid>-<random>``,
in the same directory so the rename cannot cross file systems) and renamed
over the destination: a reader, or a run resumed after a kill, sees the old
file or the new one, never part of one. A temporary is removed when its
write fails; one that a killed process left is removed by the next write of
the same destination (temporaries of live processes are theirs).

Example:
  >>> from gq_tf.fileio import atomic_json, atomic_path, atomic_write
  >>> atomic_write("out/results.md", text)
  >>> atomic_json("out/results.json", {"rows": rows})
  >>> with atomic_path("cache/features.npz", suffix=".npz") as tmp:
  ...     np.savez(tmp, x=x)  # renamed to features.npz when the block ends
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path

__all__ = ["atomic_json", "atomic_path", "atomic_write", "new_file_mode", "remove_stale_tmp", "tmp_name"]


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process's umask,
    read without setting it (``os.umask`` would change it for every thread)."""
    try:
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = 0o022
    return 0o666 & ~umask


def tmp_name(path, suffix: str = "") -> Path:
    """A temporary for ``path`` that only this process uses: ``.<name>.tmp-<pid>-<random><suffix>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def remove_stale_tmp(path, log=None, what: str = "") -> list[Path]:
    """Removes the temporaries of ``path`` (files or directories, see :func:`tmp_name`) whose
    process is gone: left by a killed run. Returns what was removed."""
    path = Path(path)
    removed = []
    prefix = f".{path.name}.tmp-"
    for tmp in path.parent.glob(f"{glob_escape(prefix)}*"):
        try:
            pid = int(tmp.name[len(prefix):].split("-")[0].split(".")[0])
            os.kill(pid, 0)
            continue  # a live process owns it
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError, OverflowError):
            continue
        if log is not None:
            log(f"{what + ': ' if what else ''}removing {tmp} left by an interrupted run")
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def glob_escape(text: str) -> str:
    """``text`` with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


@contextlib.contextmanager
def atomic_path(path, suffix: str = "", *, log=None):
    """Yields a temporary path for ``path``; when the block ends without an
    exception, the temporary (a file, or a directory the block made) is
    renamed to ``path`` with the mode a plain ``open()`` gives a file.

    ``suffix`` ends the temporary's name, for writers that add one
    (``np.savez`` adds ``.npz`` unless the name has it). On an exception
    the temporary is removed and ``path`` is left as it was.
    """
    path = Path(path)
    remove_stale_tmp(path, log)
    tmp = tmp_name(path, suffix)
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write(path, data) -> None:
    """Writes ``data`` (bytes, or str as UTF-8) to ``path`` all at once."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def atomic_json(path, data) -> None:
    """Writes ``data`` as indented JSON to ``path`` all at once (floats from numpy included)."""
    atomic_write(path, json.dumps(data, indent=1, default=float))
