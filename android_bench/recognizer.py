"""The native streaming runner (``android_bench/native/gq_stream.c``): build, run, parse.

``gq_stream`` runs the whole streaming recognizer of an export directory
(``gq_speech.deploy.export_streaming``: three step graphs and
``streaming.json``) on feature files, against the TFLite C API only (loaded
with dlopen, so any build that exports it works: Debian's
``libtensorflow-lite`` here, through :mod:`android_bench.tflite_c`, or
Android's ``libtensorflowlite_c.so`` on a phone) with our delegate, and
prints the transcripts, every chunk's latency, the user-perceived latency
and the peak memory. Its output format is documented in the C file and read
by :func:`parse`.

Example (host)::

    from android_bench import recognizer, tflite_c
    out = recognizer.run("runs/asr_demo/rnnt/gq_mixed/stream", ["u0.npy"], sysroot=tflite_c.fetch())
    out["summary"]["chunk_p50_ms"], out["utterances"][0]["tokens"]
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["FORMAT_VERSION", "RUNNER_SOURCES", "RunnerError", "build_runner", "host_runner", "parse", "run"]

ROOT = Path(__file__).resolve().parent.parent
NATIVE = Path(__file__).resolve().parent / "native"
RUNNER_SOURCES = ("android_bench/native/gq_stream.c", "android_bench/native/gq_json.c")
RUNNER_FLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra", "-Werror")
FORMAT_VERSION = 1


class RunnerError(RuntimeError):
    """The native runner failed or printed something that is not its format."""


def build_runner(out, cc="cc", extra_flags=()) -> Path:
    """Compiles the runner with ``cc`` (any target: ``aarch64-linux-gnu-gcc``, the NDK's clang) into ``out``.

    Raises:
      RunnerError: the compiler failed (its message included).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*str(cc).split(), *RUNNER_FLAGS, *extra_flags, *(str(ROOT / s) for s in RUNNER_SOURCES),
           "-ldl", "-lm", "-o", str(out)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise RunnerError(f"Expected a C compiler {cc!r} to build the runner. Received: {e}.") from None
    if r.returncode != 0:
        raise RunnerError(f"Expected `{' '.join(cmd)}` to build the runner. Received exit {r.returncode}:\n"
                          f"{r.stderr[-3000:]}")
    return out


def host_runner() -> Path:
    """The runner ``setup.py`` built for this host (``android_bench/native/gq_stream``).

    Raises:
      RunnerError: not built (says how to build it).
    """
    path = NATIVE / "gq_stream"
    if not path.exists():
        raise RunnerError(f"Expected the native runner at {path}. Received none: build it with "
                          "`.venv/bin/python setup.py build_ext --inplace` (or reinstall the package).")
    return path


def run(export_dir, features, *, sysroot, runner=None, delegate=None, kernel="auto", threads=1, warmup=1,
        max_symbols=5, frame_ms=10.0, timeout=600, qemu_cpu="max") -> dict:
    """Runs the runner on feature files (``.npy``, float32 [T, n_mels]) and parses its output.

    Args:
      export_dir: an ``export_streaming`` directory.
      features: paths of ``.npy`` feature files, one utterance each.
      sysroot: the ``tflite_c.Sysroot`` whose TFLite C library (and loader) runs it.
      runner, delegate: the runner and ``libgq_delegate.so`` built for the
        sysroot's architecture (default: this host's builds).
      kernel, threads, warmup, max_symbols, frame_ms: the runner's options.

    Returns:
      :func:`parse`'s dict.

    Raises:
      RunnerError: the runner failed (its error line), or timed out.
    """
    if delegate is None:
        from converters.runtime import delegate_path

        delegate = delegate_path()
    runner = runner or host_runner()
    cmd = sysroot.command(runner, "--tflite", sysroot.library, "--delegate", delegate, "--kernel", kernel,
                          "--threads", threads, "--warmup", warmup, "--max-symbols", max_symbols,
                          "--frame-ms", frame_ms, export_dir, *features, qemu_cpu=qemu_cpu)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                           env=dict(os.environ, LC_ALL="C"))
    except subprocess.TimeoutExpired:
        raise RunnerError(f"Expected the runner to finish within {timeout} s: {' '.join(map(str, cmd))}") from None
    if r.returncode != 0:
        lines = [line for line in r.stderr.splitlines() if line.startswith("error\t")]
        why = lines[-1].split("\t", 1)[1] if lines else r.stderr.strip()[-2000:]
        raise RunnerError(f"The native runner failed (exit {r.returncode}): {why}")
    return parse(r.stdout)


def _float(value, line):
    try:
        return float(value)
    except ValueError:
        raise RunnerError(f"Expected a number in the runner's line {line!r}. Received {value!r}.") from None


def parse(text: str) -> dict:
    """The runner's output as ``{"runtime", "kernel", "threads", "utterances": [...], "summary": {...}}``.

    Each utterance: ``index``, ``path``, ``frames``, ``chunks``, ``upl_ms``,
    ``busy_ms``, ``tokens`` (list of int), ``text``, ``chunk_ms`` (list),
    ``calls`` ({graph: count}). ``summary``: ``utterances``, ``chunks``,
    ``chunk_p50_ms``, ``chunk_p90_ms``, ``upl_p50_ms``, ``upl_p90_ms``,
    ``rtf``, ``peak_rss_kb``.

    Raises:
      RunnerError: not this format (another version, a cut or garbled line).
    """
    lines = text.splitlines()
    if not lines or lines[0] != f"gq_stream\t{FORMAT_VERSION}":
        raise RunnerError(f"Expected the runner's output to start with 'gq_stream\\t{FORMAT_VERSION}'. Received "
                          f"{(lines[0] if lines else '')!r}.")
    out = {"utterances": []}
    by_index = {}
    for line in lines[1:]:
        fields = line.split("\t")
        kind, rest = fields[0], fields[1:]
        if kind == "runtime":
            pairs = dict(zip(rest[1::2], rest[2::2]))
            out.update(runtime=rest[0], kernel=pairs.get("kernel"), threads=int(pairs.get("threads", 0) or 0))
        elif kind == "utterance":
            if len(rest) < 14:
                raise RunnerError(f"Expected 15 fields in the runner's utterance line. Received {line!r}.")
            pairs = dict(zip(rest[2:14:2], rest[3:14:2]))
            u = {"index": int(rest[0]), "path": rest[1], "frames": int(pairs["frames"]),
                 "chunks": int(pairs["chunks"]), "upl_ms": _float(pairs["upl_ms"], line),
                 "busy_ms": _float(pairs["busy_ms"], line),
                 "tokens": [int(t) for t in pairs["tokens"].split(",") if t],
                 "text": rest[13] if len(rest) > 13 else "", "chunk_ms": [], "calls": {}}
            by_index[u["index"]] = u
            out["utterances"].append(u)
        elif kind == "chunk_ms":
            if int(rest[0]) not in by_index:
                raise RunnerError(f"Expected chunk times after their utterance line. Received {line!r}.")
            by_index[int(rest[0])]["chunk_ms"] = [_float(v, line) for v in rest[1:]]
        elif kind == "calls":
            if int(rest[0]) not in by_index:
                raise RunnerError(f"Expected call counts after their utterance line. Received {line!r}.")
            by_index[int(rest[0])]["calls"] = {k: int(v) for k, v in zip(rest[1::2], rest[2::2])}
        elif kind == "summary":
            pairs = dict(zip(rest[0::2], rest[1::2]))
            out["summary"] = {k: (int(v) if k in ("utterances", "chunks", "peak_rss_kb") else _float(v, line))
                              for k, v in pairs.items()}
        else:
            raise RunnerError(f"Expected runtime, utterance, chunk_ms, calls or summary lines. Received {line!r}.")
    if "summary" not in out:
        raise RunnerError("Expected a summary line at the end of the runner's output. Received none (cut short?).")
    return out


def main(argv=None) -> int:
    """``python -m android_bench.recognizer --cc aarch64-linux-gnu-gcc --out build/aarch64/gq_stream``:
    the runner for another Linux target (the host's is built by setup.py, Android's by build-delegate)."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m android_bench.recognizer", description=main.__doc__.split("\n")[0])
    p.add_argument("--cc", default="cc", help="C compiler for the target (default cc)")
    p.add_argument("--out", required=True, help="the program to write")
    args = p.parse_args(argv)
    try:
        print(build_runner(args.out, cc=args.cc))
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
