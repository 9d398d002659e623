"""``android_bench run --recognizer``: the whole streaming recognizer on a phone (or this host), natively.

For each export directory (``gq_speech.deploy.export_streaming``: float,
int8, GQ, ...) it runs the native runner (:mod:`android_bench.recognizer`)
on the same feature files, interleaved (round r of every variant, then
round r+1), pinned to the big cores, and writes ``results.json`` and
``report.md``: per variant per-chunk latency P50/P90, user-perceived
latency P50/P90, real-time factor, peak memory (the runner's VmHWM) and
their ratios to the baseline variant, and every transcript (checked equal
across rounds).

On a phone (adb) it pushes the runner, our delegate and the TFLite C library
the user supplies (``libtensorflowlite_c.so`` for arm64-v8a; each checked
for the device's ABI first, the library also for the TFLite C API), the
graphs and the features into one folder under /data/local/tmp, removed at
the end. With ``host=True`` it runs here with Debian's TFLite C library
(:mod:`android_bench.tflite_c`).
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from pathlib import Path

import numpy as np

from android_bench import recognizer
from android_bench.errors import BenchArgumentError, BenchError
from android_bench.targets import REMOTE_ROOT, check_abi

__all__ = ["C_API_SYMBOL", "bench_recognizers", "feature_files", "summarize", "table"]

C_API_SYMBOL = b"TfLiteInterpreterCreate\0"
EXPORT_FILES = ("streaming.json",)


def feature_files(paths, folder: Path) -> list[Path]:
    """``.npy`` files of one utterance each: given ones as they are, every array of an ``.npz`` written out.

    Raises:
      BenchArgumentError: a file that is neither, or arrays that are not [frames, n_mels] float.
    """
    out = []
    for p in map(Path, paths):
        if not p.is_file():
            raise BenchArgumentError(f"--features {p}: no such file.")
        if p.suffix == ".npy":
            out.append(p)
        elif p.suffix == ".npz":
            with np.load(p) as z:
                for name in z.files:
                    a = np.asarray(z[name])
                    if a.ndim != 2 or a.dtype.kind != "f":
                        raise BenchArgumentError(f"--features {p}: expected arrays of [frames, n_mels] floats. "
                                                 f"Received {name!r} of shape {list(a.shape)} and type {a.dtype}.")
                    folder.mkdir(parents=True, exist_ok=True)
                    out.append(folder / f"{p.stem}_{name}.npy")
                    np.save(out[-1], a.astype(np.float32))
        else:
            raise BenchArgumentError(f"--features {p}: expected .npy (one utterance, float32 [frames, n_mels]) or "
                                     f".npz (one array per utterance). Received a {p.suffix or 'file without suffix'}.")
    if not out:
        raise BenchArgumentError("--features: expected at least one utterance. Received none.")
    return out


def _check_export(path: Path) -> dict:
    manifest = path / "streaming.json"
    if not manifest.is_file():
        raise BenchArgumentError(f"--recognizer {path}: expected an export directory with streaming.json "
                                 "(gq_speech.deploy.export_streaming). Received none there.")
    try:
        m = json.loads(manifest.read_text())
        files = [m["graphs"][part]["file"] for part in ("encoder", "prediction", "joint")]
    except (ValueError, KeyError, TypeError) as e:
        raise BenchArgumentError(f"--recognizer {path}: expected streaming.json to name the encoder, prediction "
                                 f"and joint graphs. Received an unreadable one ({e}).") from None
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        raise BenchArgumentError(f"--recognizer {path}: streaming.json names {missing}, which are not there.")
    return {"manifest": m, "files": files}


def _check_c_api(path: str) -> None:
    data = Path(path).read_bytes()
    if C_API_SYMBOL not in data:
        raise BenchArgumentError(
            f"--tflite-c {path}: expected a TFLite library that exports the C API (TfLiteInterpreterCreate, ...), "
            "e.g. libtensorflowlite_c.so of the tensorflow-lite AAR (jni/arm64-v8a/) or built with "
            "`bazel build -c opt --config=android_arm64 //tensorflow/lite/c:tensorflowlite_c`. Received a file "
            "without it.")


class _Device:
    """A folder on the phone with everything the runner needs."""

    def __init__(self, adb, log):
        self.adb, self.log = adb, log
        self.dir = f"{REMOTE_ROOT}/gq_stream_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:6]}"

    def setup(self, runner, delegate, tflite, exports, features):
        q = shlex.quote(self.dir)
        status, out = self.adb.shell(f"mkdir -p {q}")
        if status != 0:
            raise BenchError(f"Could not create {self.dir} on the device: {out.strip()}")
        self.log(f"pushing to {self.dir}: gq_stream, libgq_delegate.so, libtensorflowlite_c.so, "
                 f"{len(exports)} export(s), {len(features)} feature file(s)")
        self.adb.push(str(runner), f"{self.dir}/gq_stream")
        self.adb.push(str(delegate), f"{self.dir}/libgq_delegate.so")
        self.adb.push(str(tflite), f"{self.dir}/libtensorflowlite_c.so")
        for k, (path, info) in enumerate(exports):
            self.adb.shell(f"mkdir -p {q}/e{k}")
            for f in (*info["files"], *EXPORT_FILES):
                self.adb.push(str(path / f), f"{self.dir}/e{k}/{f}")
        for i, f in enumerate(features):
            self.adb.push(str(f), f"{self.dir}/f{i}.npy")
        status, out = self.adb.shell(f"chmod 755 {q}/gq_stream")
        if status != 0:
            raise BenchError(f"chmod of the runner failed on the device: {out.strip()}")

    def run(self, k, n_features, options, mask, timeout) -> dict:
        q = shlex.quote(self.dir)
        feats = " ".join(f"f{i}.npy" for i in range(n_features))
        cmd = (f"cd {q} && taskset {mask:x} ./gq_stream --tflite ./libtensorflowlite_c.so --delegate "
               f"./libgq_delegate.so {options} e{k} {feats} 2> stderr_e{k}.txt; echo \"status=$?\"")
        status, out = self.adb.shell(cmd, timeout=timeout)
        lines = out.rstrip("\n").splitlines()
        code = lines[-1].partition("=")[2] if lines and lines[-1].startswith("status=") else "?"
        if code != "0":
            _, err = self.adb.shell(f"cat {q}/stderr_e{k}.txt")
            why = [line.split("\t", 1)[1] for line in err.splitlines() if line.startswith("error\t")]
            raise recognizer.RunnerError(f"The runner failed on the device (exit {code}): "
                                         f"{why[-1] if why else err.strip()[-1000:] or out.strip()[-1000:]}")
        return recognizer.parse("\n".join(lines[:-1]) + "\n")

    def cleanup(self):
        status, out = self.adb.shell(f"rm -rf {shlex.quote(self.dir)}", timeout=60)
        return None if status == 0 else f"could not remove {self.dir} on the device: {out.strip()}"


def summarize(runs: list[dict]) -> dict:
    """One variant's rounds (``recognizer.parse`` dicts) as its row."""
    chunks = [c for r in runs for u in r["utterances"] for c in u["chunk_ms"]]
    upls = [u["upl_ms"] for r in runs for u in r["utterances"]]
    busy = sum(u["busy_ms"] for r in runs for u in r["utterances"])
    frames = sum(u["frames"] for r in runs for u in r["utterances"])
    transcripts = [[u["tokens"] for u in r["utterances"]] for r in runs]
    return {
        "chunk_p50_ms": float(np.percentile(chunks, 50)), "chunk_p90_ms": float(np.percentile(chunks, 90)),
        "upl_p50_ms": float(np.percentile(upls, 50)), "upl_p90_ms": float(np.percentile(upls, 90)),
        "busy_ms_per_s": busy / max(frames, 1) * 100.0,  # ms of work per s of audio at 10 ms frames
        "peak_mb": max(r["summary"]["peak_rss_kb"] for r in runs) / 1024.0,
        "chunks": len(chunks), "rounds": len(runs), "runtime": runs[0]["runtime"],
        "transcripts_stable": all(t == transcripts[0] for t in transcripts),
        "utterances": [{"path": u["path"], "tokens": u["tokens"], "text": u["text"]} for u in runs[0]["utterances"]],
    }


def table(results: dict) -> str:
    rows = results["variants"]
    base = rows[results["baseline"]]
    head = ("| variant | chunk P50 ms | chunk P90 ms | UPL P50 ms | UPL P90 ms | RTF | peak MB | chunk P50 / base "
            "| UPL P50 / base | memory / base |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['chunk_p50_ms']:.3f} | {r['chunk_p90_ms']:.3f} | {r['upl_p50_ms']:.3f} | "
                     f"{r['upl_p90_ms']:.3f} | {r['busy_ms_per_s'] / 1000:.4f} | {r['peak_mb']:.1f} | "
                     f"{r['chunk_p50_ms'] / base['chunk_p50_ms']:.2f} | {r['upl_p50_ms'] / base['upl_p50_ms']:.2f} "
                     f"| {r['peak_mb'] / base['peak_mb']:.2f} |")
    return "\n".join(lines)


def bench_recognizers(exports, features, *, host=False, adb=None, serial=None, runner=None, delegate=None,
                      tflite_c=None, kernel="auto", threads=1, rounds=3, warmup=1, cpu_mask=None, baseline=None,
                      timeout=600.0, out_dir=None, log=print) -> dict:
    """Benchmarks the streaming recognizers of ``exports`` on ``features``; writes and returns the results.

    Args:
      exports: export directories, one variant each (named by their folder, or parent/folder when two share one).
      features: ``.npy``/``.npz`` feature files (:func:`feature_files`).
      host: run here (Debian's TFLite C library) instead of on the adb device.
      adb, serial: the adb binary and device.
      runner, delegate, tflite_c: the runner, our delegate and the TFLite C
        library built for the device (host: the built ones and Debian's).
      kernel, threads, warmup: the runner's options; rounds: interleaved rounds.
      cpu_mask: taskset mask (int; default the big cores).
      baseline: the variant the ratios are against (default the first).
      out_dir: where results.json and report.md go.

    Raises:
      BenchArgumentError: bad input (names what and why), before anything is pushed.
      BenchError, recognizer.RunnerError: the device or the runner failed.
    """
    from android_bench import tflite_c as tflite_c_mod
    from android_bench.adb import Adb
    from android_bench.targets import DeviceTarget

    paths = [Path(e) for e in exports]
    if not paths:
        raise BenchArgumentError("--recognizer: expected at least one export directory. Received none.")
    infos = [(p, _check_export(p)) for p in paths]
    names = [p.name if [q.name for q in paths].count(p.name) == 1 else f"{p.parent.name}/{p.name}" for p in paths]
    base = names[0] if baseline is None else baseline
    if base not in names:
        raise BenchArgumentError(f"--baseline: expected one of {names}. Received {baseline!r}.")
    if rounds < 1 or threads < 1 or warmup < 0:
        raise BenchArgumentError(f"Expected rounds >= 1, threads >= 1, warmup >= 0. Received {rounds}, {threads}, "
                                 f"{warmup}.")
    out_dir = Path(out_dir or f"android_bench_out/recognizer_{'host' if host else 'device'}_"
                              f"{time.strftime('%Y%m%d_%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    feats = feature_files(features, out_dir / "features")
    options = f"--kernel {shlex.quote(kernel)} --threads {threads} --warmup {warmup}"
    results = {"format": "android_bench.recognizer/1", "target": "host" if host else "device", "kernel": kernel,
               "threads": threads, "rounds": rounds, "warmup": warmup, "baseline": base,
               "exports": {n: str(p) for n, p in zip(names, paths)}, "features": [str(f) for f in feats],
               "order": "interleaved: round r of every variant, then round r+1", "variants": {}}
    runs = {n: [] for n in names}
    if host:
        sysroot = tflite_c_mod.fetch(log=log)
        results["device"] = {"host": True, "tflite_c": str(sysroot.library)}
        for r in range(rounds):
            for n, p in zip(names, paths):
                log(f"round {r + 1}/{rounds}: {n}")
                runs[n].append(recognizer.run(p, feats, sysroot=sysroot, runner=runner, delegate=delegate,
                                              kernel=kernel, threads=threads, warmup=warmup, timeout=timeout))
    else:
        for flag, path in (("--runner", runner), ("--delegate", delegate), ("--tflite-c", tflite_c)):
            if not path or not Path(path).is_file():
                raise BenchArgumentError(
                    f"A device run needs {flag} built for the device. Received {path!r}."
                    + (" Build the runner and the delegate with `python -m android_bench build-delegate --ndk PATH "
                       "--abi arm64-v8a`." if flag != "--tflite-c" else
                       " Use libtensorflowlite_c.so for arm64-v8a (the tensorflow-lite AAR's jni/arm64-v8a/, or "
                       "`bazel build -c opt --config=android_arm64 //tensorflow/lite/c:tensorflowlite_c`)."))
        adb_ = Adb(adb, serial)
        device = adb_.select()
        log(f"device {device.serial} {device.details}".rstrip())
        facts = DeviceTarget(adb_, log=log).facts()
        abis = DeviceTarget(adb_, log=log).abis(facts)
        check_abi(str(runner), "The native runner", abis)
        check_abi(str(delegate), "The delegate", abis)
        check_abi(str(tflite_c), "The TFLite C library", abis)
        _check_c_api(str(tflite_c))
        mask = cpu_mask if cpu_mask is not None else int(facts["big_core_mask"], 16)
        results["device"] = {**facts, "mask": f"{mask:x}"}
        dev = _Device(adb_, log)
        try:
            dev.setup(runner, delegate, tflite_c, infos, feats)
            for r in range(rounds):
                for k, n in enumerate(names):
                    log(f"round {r + 1}/{rounds}: {n}")
                    runs[n].append(dev.run(k, len(feats), options, mask, timeout))
        finally:
            warning = dev.cleanup()
            if warning:
                log(f"warning: {warning}")
    for n in names:
        results["variants"][n] = summarize(runs[n])
    results["raw"] = runs
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    report = (f"# Streaming recognizer, {results['target']}\n\n{len(feats)} utterances x {rounds} rounds, "
              f"interleaved; kernel {kernel}, {threads} thread(s); runtime TFLite "
              f"{results['variants'][names[0]]['runtime']}; ratios against {base}.\n\n{table(results)}\n")
    (out_dir / "report.md").write_text(report)
    results["out_dir"] = str(out_dir)
    return results
