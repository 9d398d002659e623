"""``android_bench.benchmark(models, ...)`` and ``python -m android_bench run MODEL...``.

Latency and memory of .tflite models, on an Android device over adb with
TFLite's stock ``benchmark_model`` (and our delegate for GQ models), or on
this machine (``target="host"``, ``--host``). :func:`benchmark` runs the
protocol below and returns a :class:`Results`, writing the report files only
when given ``out_dir``; the ``run`` command is a thin layer over the same
run: its flags become the function's settings, it always writes the reports
(``--out``, default ``android_bench_out/<target>_<time>``), prints the tables
and exits with :attr:`Results.exit_status`.

Protocol (the same on both targets):

- The timed inferences of a model are spread over *sessions*: one fresh
  ``benchmark_model`` process each, run as
  ``taskset MASK benchmark_model --graph=M [--external_delegate_path=D]
  --num_threads=T --warmup_runs=W --warmup_min_secs=S --num_runs=2
  --min_secs=0 --report_peak_memory_footprint=true``.
- Per-run timings: the stock binary prints only a summary line of its timed
  loop (``count= first= curr= min= max= avg= std=``), never the list of
  runs. With exactly two timed runs per session that line determines both
  runs exactly (``first`` and ``curr``; ``count=2 curr=V(all same)`` when
  equal), so every sample in the report is one real inference, and P50/P90
  are percentiles of those samples. Every session also gives an init time,
  a first inference (the first warmup run) and a peak memory footprint.
- Sessions of the models alternate, A B A B ..., so drift (temperature,
  frequency, background load) hits every model alike.
- GQ models (any ``GQ_*`` custom op) run with the delegate; others without.
- ``--op-profile``: after the timed sessions, one more session per model
  with ``--enable_op_profiling=true`` (``--op-profile-runs`` runs), whose
  tables ``opprofile.parse_benchmark_profile`` reads; the timed sessions
  never run with the profiler. On ``--host`` without a benchmark_model
  binary, ``python -m android_bench profile`` (isolated single-node models,
  see ``opprofile.py``) in a fresh pinned process instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from android_bench import benchmark_output, opprofile, report
from android_bench.adb import Adb, DeviceLost
from android_bench.errors import API, CLI, BenchArgumentError, BenchError, Wording
from android_bench.targets import DeviceTarget, HostTarget, check_abi, cpu_list, parse_mask

RUNS_PER_SESSION = 2
EXIT_OK, EXIT_MODEL_FAILED, EXIT_USAGE, EXIT_DEVICE_LOST, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
PREBUILT_HINT = (
    "TFLite publishes nightly prebuilt binaries, e.g. https://storage.googleapis.com/"
    "tensorflow-nightly-public/prod/tensorflow/release/lite/tools/nightly/latest/"
    "android_aarch64_benchmark_model (android_arm_benchmark_model for 32-bit); or build it with "
    "Bazel: `bazel build -c opt --config=android_arm64 //tensorflow/lite/tools/benchmark:benchmark_model`."
)


@dataclass
class Protocol:
    runs: int = 40
    warmup_runs: int = 5
    warmup_secs: float = 0.5
    threads: int = 1
    mask: int = 1
    mask_reason: str = ""
    timeout: float = 600.0
    extra_args: list[str] = field(default_factory=list)
    op_profile: bool = False
    op_profile_runs: int = 100

    @property
    def sessions(self) -> int:
        return math.ceil(self.runs / RUNS_PER_SESSION)

    def flags(self, graph: str, delegate: str | None, num_runs: int) -> list[str]:
        flags = [f"--graph={graph}"]
        if delegate:
            flags.append(f"--external_delegate_path={delegate}")
        flags += [f"--num_threads={self.threads}", f"--warmup_runs={self.warmup_runs}",
                  f"--warmup_min_secs={self.warmup_secs:g}", f"--num_runs={num_runs}", "--min_secs=0",
                  "--report_peak_memory_footprint=true"]
        return flags + list(self.extra_args)

    def profile_flags(self, graph: str, delegate: str | None) -> list[str]:
        """The flags of the op-profile session: the timed sessions' with the profiler on.

        Extra flags that would move or duplicate the profile are left out
        (``--profiling_output_csv_file`` sends the tables to a file).
        """
        flags = [f for f in self.flags(graph, delegate, self.op_profile_runs)
                 if not f.startswith(_PROFILE_FLAGS)]
        return flags + ["--enable_op_profiling=true"]

    def delegate_kernel(self) -> str | None:
        """The GQ kernel named by an extra ``--external_delegate_options=...;kernel:NAME;...``, if any."""
        for arg in self.extra_args:
            if arg.startswith("--external_delegate_options="):
                for item in arg.partition("=")[2].split(";"):
                    key, _, value = item.partition(":")
                    if key.strip() == "kernel" and value.strip():
                        return value.strip()
        return None


_PROFILE_FLAGS = ("--enable_op_profiling", "--profiling_output_csv_file")


@dataclass
class Session:
    index: int
    samples_us: list[int]
    init_us: float
    first_inference_us: float | None
    warmup_runs: int
    warmup_avg_us: float | None
    peak_memory_mb: float | None
    init_footprint_mb: float | None
    overall_footprint_mb: float | None
    vm_rss_mb: float | None
    log: str
    files: list[str] = field(default_factory=list)


@dataclass
class ModelResult:
    name: str
    path: str
    sha256: str
    size_bytes: int
    custom_ops: list[str]
    uses_delegate: bool
    sessions: list[Session] = field(default_factory=list)
    error: str | None = None
    summary: dict | None = None
    vs_baseline: dict | None = None
    op_profile: dict | None = None


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_info(path) -> dict:
    p = Path(path)
    return {"path": str(p.resolve()), "size_bytes": p.stat().st_size, "sha256": _sha256(p)}


def summarize(sessions: list[Session]) -> dict | None:
    """Statistics over every timed run of every session of one model."""
    samples = np.array([s for ses in sessions for s in ses.samples_us], dtype=np.float64)
    if samples.size == 0:
        return None

    def median(values):
        values = [v for v in values if v is not None]
        return float(np.median(values)) if values else None

    peaks = [s.peak_memory_mb for s in sessions if s.peak_memory_mb is not None]
    return {
        "runs": int(samples.size),
        "sessions": len(sessions),
        "p50_us": float(np.percentile(samples, 50)),
        "p90_us": float(np.percentile(samples, 90)),
        "mean_us": float(samples.mean()),
        "std_us": float(samples.std(ddof=1)) if samples.size > 1 else 0.0,
        "min_us": float(samples.min()),
        "max_us": float(samples.max()),
        # Per-session numbers: the median over sessions (init, first
        # inference, footprint growth), the largest peak.
        "init_us": median(s.init_us for s in sessions),
        "first_inference_us": median(s.first_inference_us for s in sessions),
        "peak_memory_mb": max(peaks) if peaks else None,
        "footprint_mb": median(s.overall_footprint_mb for s in sessions),
    }


RATIO_KEYS = ("p50_us", "p90_us", "mean_us", "init_us", "first_inference_us", "peak_memory_mb", "footprint_mb")


def compare(summary: dict, base: dict, size: int, base_size: int) -> dict:
    """Ratios model / baseline (``< 1``: smaller or faster)."""
    ratios = {"size_bytes": size / base_size if base_size else None}
    for key in RATIO_KEYS:
        a, b = summary.get(key), base.get(key)
        ratios[key] = a / b if a is not None and b else None
    return ratios


def pick_baseline(results: list[ModelResult], choice: str | None, wording: Wording = CLI) -> int:
    """Index of the baseline model: ``--baseline`` (index, file name or stem),
    else the first model without GQ ops, else the first model."""
    if choice is not None:
        for i, r in enumerate(results):
            if choice in (str(i), r.name, Path(r.path).name, r.path):
                return i
        names = ", ".join(r.name for r in results)
        raise BenchArgumentError(f"{wording.name('baseline')} {choice!r} is not one of the models ({names}) "
                                 "or their indices.")
    for i, r in enumerate(results):
        if not r.uses_delegate:
            return i
    return 0


def _unique_names(paths: list[Path]) -> list[str]:
    names = [p.stem for p in paths]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def load_models(paths: list[str]) -> list[ModelResult]:
    """Checks the model files and reads their custom ops.

    Every model goes through ``converters.modelcheck.check_model`` here, at
    the start of a run: a model it refuses (one that could crash the
    benchmark binary, e.g. a graph input that names a constant) stops the run
    with that message before any device is contacted or anything is pushed.

    Raises:
      BenchArgumentError: no model, a missing file, or a model that is not a
        TFLite flatbuffer or fails the model checks.
    """
    from converters.modelcheck import check_model
    from converters.runtime import custom_ops

    if not paths:
        raise BenchArgumentError("Expected at least one .tflite MODEL to benchmark.")
    files = [Path(p) for p in paths]
    results = []
    for p, name in zip(files, _unique_names(files)):
        if not p.is_file():
            raise BenchArgumentError(f"Model file not found: {str(p)!r}.")
        try:
            check_model(p)
            ops = custom_ops(p)
        except ValueError as e:
            raise BenchArgumentError(str(e)) from None
        info = file_info(p)
        results.append(ModelResult(name, info["path"], info["sha256"], info["size_bytes"], ops,
                                   uses_delegate=any(op.startswith("GQ_") for op in ops)))
    return results


def _session_from(index: int, out: benchmark_output.BenchmarkOutput, num_runs: int, log: str) -> Session:
    samples = out.inference.samples()
    if samples is None or len(samples) != num_runs:
        raise benchmark_output.BenchmarkOutputError(
            f"Expected exactly {num_runs} timed runs (--num_runs={num_runs} --min_secs=0), the binary "
            f"ran {out.inference.count}: it may not support --min_secs (too old a benchmark_model?)."
        )
    return Session(
        index=index, samples_us=[int(s) for s in samples], init_us=out.init_us,
        first_inference_us=out.first_inference_us,
        warmup_runs=out.warmup.count if out.warmup else 0,
        warmup_avg_us=out.warmup.avg_us if out.warmup else None,
        peak_memory_mb=out.peak_memory_mb, init_footprint_mb=out.init_footprint_mb,
        overall_footprint_mb=out.overall_footprint_mb, vm_rss_mb=out.vm_rss_mb, log=log)


def _fmt_ms(us) -> str:
    return "-" if us is None else f"{us / 1000:.3f} ms"


def measure(target, models: list[ModelResult], protocol: Protocol, results: dict, out_dir: Path, log=print,
            save: bool = True):
    """Runs the interleaved sessions, filling ``results`` as it goes.

    Session logs go to ``out_dir/logs``. With ``save``, ``results.json`` is
    rewritten after every round, so an interruption or a lost device keeps
    what was measured. Raises DeviceLost/KeyboardInterrupt after saving.
    """
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    remaining = protocol.runs
    for rnd in range(protocol.sessions):
        num_runs = min(RUNS_PER_SESSION, remaining)
        remaining -= num_runs
        for i, m in enumerate(models):
            if m.error:
                continue
            flags = protocol.flags(target.model_path(i), target.delegate_path if m.uses_delegate else None,
                                   num_runs)
            status, text = target.session(flags, protocol.mask, protocol.timeout)
            log_name = f"logs/{m.name.replace('#', '_')}.s{rnd:03d}.txt"
            (out_dir / log_name).write_text(text)
            try:
                if status != 0:
                    try:
                        benchmark_output.parse(text)
                    except benchmark_output.BenchmarkOutputError as e:
                        raise benchmark_output.BenchmarkOutputError(f"exit status {status}. {e}") from None
                    raise benchmark_output.BenchmarkOutputError(f"exit status {status} after a complete output")
                session = _session_from(rnd, benchmark_output.parse(text), num_runs, log_name)
            except benchmark_output.BenchmarkOutputError as e:
                m.error = f"session {rnd} failed ({log_name}): {e}"
                log(f"  {m.name}: FAILED" + (f", see {out_dir / log_name}" if save else "") + f"\n    {e}")
                continue
            session.files = target.collect_files(out_dir / "files", f"{m.name.replace('#', '_')}.s{rnd:03d}.")
            m.sessions.append(session)
            times = " ".join(_fmt_ms(s) for s in session.samples_us)
            mem = f"{session.peak_memory_mb:.1f} MB" if session.peak_memory_mb is not None else "-"
            log(f"[{rnd + 1}/{protocol.sessions}] {m.name}: {times} · init {_fmt_ms(session.init_us)} · "
                f"peak {mem}")
        finalize(results, models)
        if save:
            report.write_json(results, out_dir)
        if all(m.error for m in models):
            break


def _mean_us(stat: benchmark_output.RunStat) -> float | None:
    return stat.avg_us if stat.avg_us is not None else stat.curr_us


def _profile_one(target, i: int, m: ModelResult, protocol: Protocol, out_dir: Path) -> dict:
    """The op profile of model ``i`` as results.json stores it (with ``log``, or ``error``)."""
    stem = m.name.replace("#", "_")
    log_name = f"logs/{stem}.profile.txt"
    if not target.native_op_profiler:
        json_name = f"logs/{stem}.profile.json"
        status, text = target.op_profile_session(i, out_dir / json_name, protocol.op_profile_runs,
                                                 protocol.threads, protocol.delegate_kernel(), protocol.mask,
                                                 protocol.timeout)
        (out_dir / log_name).write_text(text)
        if status != 0:
            return {"error": f"the host op profiler failed with exit status {status} ({log_name}): "
                             f"{text.strip()[-500:]}", "log": log_name}
        try:
            profile = json.loads((out_dir / json_name).read_text())["models"][0]["op_profile"]
        except (OSError, ValueError, KeyError, IndexError) as e:
            return {"error": f"the host op profiler wrote no readable {json_name}: {e}", "log": log_name}
        if m.uses_delegate and target.delegate_path:
            from converters.runtime import delegate_path

            if Path(target.delegate_path).resolve() != Path(delegate_path()).resolve():
                profile["notes"].append(f"GQ ops ran with the built delegate {delegate_path()}, not "
                                        f"--delegate {target.delegate_path} (the host profiler loads the former)")
        return {**profile, "log": json_name}
    flags = protocol.profile_flags(target.model_path(i), target.delegate_path if m.uses_delegate else None)
    status, text = target.session(flags, protocol.mask, protocol.timeout)
    (out_dir / log_name).write_text(text)
    target.collect_files(out_dir / "files", f"{stem}.profile.")
    try:
        out = benchmark_output.parse(text)
        if status != 0:
            raise benchmark_output.BenchmarkOutputError(f"exit status {status} after a complete output")
        profile = opprofile.parse_benchmark_profile(text)
    except (benchmark_output.BenchmarkOutputError, BenchError) as e:
        return {"error": f"op-profile session failed ({log_name}): {e}", "log": log_name}
    profile.whole_graph_us = _mean_us(out.inference)
    profile.notes.append(f"whole graph: the mean of the same session's {out.inference.count} timed runs, "
                         "profiler on (the latency table's sessions ran without it)")
    return {**profile.to_dict(), "log": log_name}


def profile_ops(target, models: list[ModelResult], protocol: Protocol, results: dict, out_dir: Path, log=print,
                save: bool = True):
    """One op-profile session per measured model, after all timed sessions.

    A model whose profile fails gets ``{"error": ...}`` as its
    ``op_profile``; the others are still profiled. With ``save``,
    ``results.json`` is rewritten after each model.
    """
    for i, m in enumerate(models):
        if m.error:
            continue
        m.op_profile = _profile_one(target, i, m, protocol, out_dir)
        if "error" in m.op_profile:
            log(f"  {m.name}: op profile FAILED\n    {m.op_profile['error']}")
        else:
            p = m.op_profile
            top = ", ".join(f"{t['type']} {t['percent']:.0f}%" for t in p["by_type"][:3] if t["percent"] is not None)
            log(f"[op profile] {m.name}: {len(p['nodes'])} nodes, sum {p['nodes_total_us'] / 1000:.3f} ms"
                + (f", whole graph {p['whole_graph_us'] / 1000:.3f} ms" if p["whole_graph_us"] is not None else "")
                + (f"; {top}" if top else ""))
        finalize(results, models)
        if save:
            report.write_json(results, out_dir)


def finalize(results: dict, models: list[ModelResult]):
    """Fills summaries and baseline ratios into ``results`` (idempotent)."""
    for m in models:
        m.summary = summarize(m.sessions)
    base = models[results["baseline_index"]]
    for i, m in enumerate(models):
        ok = m.summary is not None and base.summary is not None and i != results["baseline_index"]
        m.vs_baseline = compare(m.summary, base.summary, m.size_bytes, base.size_bytes) if ok else None
    results["models"] = [asdict(m) for m in models]


def _tool_versions() -> dict:
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for dist in ("gq-tf", "ai-edge-litert", "numpy", "matplotlib"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def _prepare_out(out: str | None, kind: str, wording: Wording = CLI) -> Path:
    path = Path(out) if out else Path("android_bench_out") / f"{kind}_{time.strftime('%Y%m%d_%H%M%S')}"
    if (path / "results.json").exists():
        name = wording.name("out_dir")
        raise BenchArgumentError(f"{name} {str(path)!r} already holds a results.json; choose another {name} "
                                 "(nothing was overwritten).")
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------ library API


@dataclass
class Results:
    """What :func:`benchmark` measured, and how the run ended.

    Attributes:
      data: the content of ``results.json`` (format ``android_bench.results/1``),
        a JSON-ready dict:

        - ``target``: ``"host"`` or ``"device"``; ``device``: the machine's or
          phone's facts (model, ABI, cores, governors, ``big_core_mask``...);
          ``tools``: versions, and path/size/sha256 of the benchmark binary
          and delegate; ``protocol``: runs, warmup, threads, CPU ``mask``
          (hex) and ``cpus``, sessions per model, ...;
        - ``started``/``finished`` (local time, ISO 8601), ``complete``
          (every session ran), ``error`` (why not, else None),
          ``cleanup_warning`` (only when something was left on the device);
        - ``baseline_index``/``baseline``: the model the ratios are against;
        - ``models``: one dict per model, in the order given: ``name`` (the
          file's stem, ``#i`` added when stems repeat), ``path``, ``sha256``,
          ``size_bytes``, ``custom_ops``, ``uses_delegate``, ``sessions``
          (each session's ``samples_us``, ``init_us``, memory, ``log``),
          ``error`` (None, or why the model failed), ``summary`` (None when
          nothing was measured, else ``runs``, ``sessions``, ``p50_us``,
          ``p90_us``, ``mean_us``, ``std_us``, ``min_us``, ``max_us``,
          ``init_us``, ``first_inference_us``, ``peak_memory_mb``,
          ``footprint_mb``), ``vs_baseline`` (ratios model / baseline of
          ``size_bytes`` and the summary's keys; None for the baseline) and
          ``op_profile`` (with ``op_profile=True``).
      out_dir: the folder holding results.json, report.md, report.png and the
        session logs (``logs/``), or None when nothing was written.
      exit_status: what ``android_bench run`` exits with for this run: 0 all
        measured, 1 a model failed (the others were measured), 3 the device
        was lost mid-run, 130 interrupted (Ctrl-C); the results measured
        before are kept in the last two cases.
    """

    data: dict
    out_dir: Path | None = None
    exit_status: int = EXIT_OK

    @property
    def complete(self) -> bool:
        """Whether every session ran (not interrupted, device not lost)."""
        return bool(self.data["complete"])

    @property
    def error(self) -> str | None:
        """Why the run ended early, or None."""
        return self.data["error"]

    @property
    def models(self) -> list[dict]:
        """One dict per model, in the order given (see ``data``'s ``models``)."""
        return self.data["models"]

    @property
    def baseline(self) -> str:
        """The name of the model the ratios are against."""
        return self.data["baseline"]

    @property
    def summaries(self) -> dict[str, dict | None]:
        """``{model name: summary}`` (P50/P90/... in microseconds; None when nothing was measured)."""
        return {m["name"]: m["summary"] for m in self.models}

    @property
    def failures(self) -> dict[str, str]:
        """``{model name: error}`` of the models that failed."""
        return {m["name"]: m["error"] for m in self.models if m["error"]}

    def table(self) -> str:
        """The Markdown tables ``android_bench run`` prints (per model; against the baseline)."""
        return report.markdown_table(self.data)

    def __repr__(self) -> str:
        names = [m["name"] for m in self.models]
        return (f"Results(target={self.data.get('target')!r}, models={names}, complete={self.complete}, "
                f"exit_status={self.exit_status}, out_dir={self.out_dir!r})")


@dataclass
class _Settings:
    """One run's settings: :func:`benchmark`'s arguments, which ``run``'s flags map onto."""

    models: list[str]
    host: bool
    serial: str | None = None
    adb: str | None = None
    benchmark_binary: str | None = None
    delegate: str | None = None
    baseline: str | None = None
    threads: int = 1
    cpu_mask: str | None = None
    warmup: int = 5
    warmup_secs: float = 0.5
    runs: int = 40
    timeout: float = 600.0
    benchmark_args: list[str] = field(default_factory=list)
    op_profile: bool = False
    op_profile_runs: int = 100
    out_dir: str | None = None
    write: bool = True  # the report files, in out_dir (None: a new android_bench_out/<target>_<time>)


def _kind(value) -> str:
    return type(value).__name__


def _expect(ok: bool, what: str, value):
    if not ok:
        raise BenchArgumentError(f"Expected {what}. Received {value!r} ({_kind(value)}).")


def _path_or_none(name: str, value) -> str | None:
    _expect(value is None or isinstance(value, (str, os.PathLike)), f"{name} as a path (str or os.PathLike) "
            "or None", value)
    return None if value is None else os.fspath(value)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def benchmark(models, *, target: str = "host", runs: int = 40, threads: int = 1, warmup: int = 5,
              warmup_secs: float = 0.5, cpu_mask: int | str | None = None, timeout: float = 600.0,
              baseline: int | str | None = None, benchmark_binary=None, delegate=None, adb=None,
              benchmark_args=(), op_profile: bool = False, op_profile_runs: int = 100, out_dir=None,
              log=None) -> Results:
    """Latency and memory of .tflite models on a phone (over adb) or on this machine.

    What ``python -m android_bench run`` does (the command is a thin layer
    over this function), without printing: the timed inferences of each
    model run in fresh ``benchmark_model`` processes of 2 runs each
    (*sessions*), pinned to a CPU mask, the sessions of the models
    interleaved (A B A B ...); GQ models run with the delegate. See the
    module's docstring for the protocol.

    Args:
      models: .tflite files (str or os.PathLike), a list or tuple of at
        least one. Each goes through ``converters.check_model`` first.
      target: ``"host"``: this machine (``python -m android_bench.hostbench``,
        LiteRT + the built delegate, or ``benchmark_binary``);
        ``"device"``: the one Android device adb lists; any other string: the
        serial of the device to use.
      runs: timed inferences per model (``ceil(runs / 2)`` sessions).
      threads: interpreter threads.
      warmup: warmup runs per session; warmup_secs: their minimum seconds.
      cpu_mask: the taskset mask (an int such as ``0xf0``, or hex text
        ``"f0"``); None: the big cores (from cpufreq), all cores of one cluster.
      timeout: seconds per session.
      baseline: the model the ratios are against (index, file name or stem);
        None: the first model without GQ ops, else the first model.
      benchmark_binary: TFLite's ``benchmark_model`` for the device's ABI
        (needed for a device; on the host optional).
      delegate: our delegate .so (needed on a device for GQ models, built by
        ``python -m android_bench build-delegate``; host default: the built
        one, ``converters.delegate_path()``).
      adb: the adb binary (default: ``adb`` on PATH).
      benchmark_args: extra ``benchmark_model`` flags, e.g.
        ``["--use_xnnpack=false"]``.
      op_profile: also an op-level profile of each model (time per node and
        op type), one extra session after the timed ones;
        op_profile_runs: its profiled runs.
      out_dir: a folder to write results.json, report.md, report.png and the
        session logs to (it must not hold a results.json already;
        results.json is rewritten after every round, so an interrupted run
        keeps what it measured). None: nothing is written (session logs go
        to a temporary folder, removed at the end).
      log: called with each progress line (e.g. ``print``); None: silent.

    Returns:
      A :class:`Results`: ``results.json``'s content as ``data``, with
      ``summaries`` (P50/P90/... per model), ``failures`` and
      ``exit_status``. A model whose sessions fail does not stop the others
      (``exit_status`` 1, its ``error`` says why); a device lost mid-run (3)
      or Ctrl-C (130) returns what was measured so far with ``complete``
      False. A cleanup that leaves files on the device is a
      ``RuntimeWarning`` (and ``data["cleanup_warning"]``).

    Raises:
      BenchArgumentError: (a ``ValueError``) a bad argument: a value of the
        wrong type or range, no model, a missing or invalid model file, an
        unknown baseline, a missing binary/delegate file, a device run
        without ``benchmark_binary`` (or without ``delegate`` for GQ models),
        a CPU mask the target does not have, an ``out_dir`` that already
        holds results. The message says what was expected and what was
        received.
      BenchError: a setup failure: no adb, no device or several without a
        serial, an unauthorized/offline device, a binary built for another
        ABI, a push that fails.

    Example:
      >>> import android_bench
      >>> res = android_bench.benchmark(["gq.tflite", "int8.tflite"], runs=20)
      >>> res.summaries["gq"]["p50_us"], res.models[0]["vs_baseline"]["p50_us"]
    """
    is_list = isinstance(models, (list, tuple))
    _expect(is_list and all(isinstance(m, (str, os.PathLike)) for m in models),
            "models as a list of .tflite paths (str or os.PathLike)"
            + (f"; for one model pass [{models!r}]" if isinstance(models, (str, os.PathLike)) else ""), models)
    _expect(len(models) > 0, "models as a list of at least one .tflite path", models)
    _expect(isinstance(target, str) and target.strip() != "",
            "target 'host', 'device' (the one connected device) or a device serial", target)
    for name, value in (("runs", runs), ("threads", threads), ("warmup", warmup),
                        ("op_profile_runs", op_profile_runs)):
        _expect(_is_int(value), f"{name} as an integer", value)
    for name, value in (("warmup_secs", warmup_secs), ("timeout", timeout)):
        _expect(_is_real(value), f"{name} as a number of seconds", value)
    _expect(cpu_mask is None or _is_int(cpu_mask) or isinstance(cpu_mask, str),
            "cpu_mask as an int (e.g. 0xf0), hex text (e.g. 'f0') or None", cpu_mask)
    _expect(baseline is None or _is_int(baseline) or isinstance(baseline, str),
            "baseline as a model's index, file name or stem, or None", baseline)
    _expect(isinstance(benchmark_args, (list, tuple)) and all(isinstance(a, str) for a in benchmark_args),
            "benchmark_args as a list of benchmark_model flags such as ['--use_xnnpack=false']", benchmark_args)
    _expect(isinstance(op_profile, bool), "op_profile as True or False", op_profile)
    _expect(log is None or callable(log), "log as a function of one str (e.g. print) or None", log)
    target = target.strip()
    settings = _Settings(
        models=[os.fspath(m) for m in models], host=target == "host",
        serial=None if target in ("host", "device") else target,
        adb=_path_or_none("adb", adb), benchmark_binary=_path_or_none("benchmark_binary", benchmark_binary),
        delegate=_path_or_none("delegate", delegate),
        baseline=None if baseline is None else str(baseline), threads=int(threads),
        cpu_mask=None if cpu_mask is None else (cpu_mask if isinstance(cpu_mask, str) else format(int(cpu_mask), "x")),
        warmup=int(warmup), warmup_secs=float(warmup_secs), runs=int(runs), timeout=float(timeout),
        benchmark_args=list(benchmark_args), op_profile=op_profile, op_profile_runs=int(op_profile_runs),
        out_dir=_path_or_none("out_dir", out_dir), write=out_dir is not None)

    def warn(msg):
        warnings.warn(f"android_bench: {msg}", RuntimeWarning, stacklevel=4)

    return _run(settings, API, log or (lambda msg: None), warn)


def _check_protocol_args(s: _Settings, w: Wording):
    for key, value, low in (("runs", s.runs, 1), ("warmup", s.warmup, 0), ("threads", s.threads, 1)):
        if value < low:
            raise BenchArgumentError(f"Expected {w.name(key)} >= {low}. Received {value}.")
    if not s.warmup_secs >= 0:
        raise BenchArgumentError(f"Expected {w.name('warmup_secs')} >= 0. Received {s.warmup_secs}.")
    if not s.timeout > 0:
        raise BenchArgumentError(f"Expected {w.name('timeout')} > 0. Received {s.timeout}.")
    if s.op_profile_runs < 1:
        raise BenchArgumentError(f"Expected {w.name('op_profile_runs')} >= 1. Received {s.op_profile_runs}.")


def _run(s: _Settings, w: Wording, log, warn) -> Results:
    """The run behind :func:`benchmark` and ``android_bench run``.

    ``w`` names the settings in messages (the flags, or the arguments);
    ``warn`` gets the warning of a cleanup that left files on the device.
    """
    _check_protocol_args(s, w)
    models = load_models(s.models)
    baseline_index = pick_baseline(models, s.baseline, w)
    needs_delegate = any(m.uses_delegate for m in models)
    delegate = s.delegate
    for key, path in (("benchmark_binary", s.benchmark_binary), ("delegate", s.delegate)):
        if path and not Path(path).is_file():
            raise BenchArgumentError(f"{w.name(key)} {path!r} does not exist.")

    if s.host:
        target = HostTarget(s.benchmark_binary, log=log)
        if needs_delegate and not delegate:
            from converters.runtime import delegate_path

            try:
                delegate = delegate_path()
            except FileNotFoundError as e:
                raise BenchError(str(e)) from None
    else:
        if not s.benchmark_binary:
            raise BenchArgumentError(
                "A device run needs TFLite's benchmark_model built for the device: pass "
                f"{w.setting('benchmark_binary', 'PATH')}. " + PREBUILT_HINT + f" (Or use {w.host}.)")
        adb = Adb(s.adb, s.serial, wording=w)
        device = adb.select()
        log(f"device {device.serial} {device.details}".rstrip())
        target = DeviceTarget(adb, log=log)
        if needs_delegate and not delegate:
            gq = ", ".join(m.name for m in models if m.uses_delegate)
            raise BenchArgumentError(
                f"Model(s) {gq} use GQ custom ops and need our delegate built for the device: "
                f"pass {w.setting('delegate', 'PATH')} (build it with `python -m android_bench build-delegate "
                "--ndk PATH --abi arm64-v8a`).")

    facts = target.facts()
    abis = target.abis(facts)
    if s.benchmark_binary:
        check_abi(s.benchmark_binary, "The benchmark binary", abis)
    if delegate and needs_delegate:
        check_abi(delegate, "The delegate", abis)
    if s.cpu_mask:
        mask, reason = parse_mask(s.cpu_mask, facts.get("cores") or None, w), w.name("cpu_mask")
    else:
        mask, reason = int(facts["big_core_mask"], 16), facts["big_core_mask_reason"]
    if s.host:
        outside = {i for i in range(mask.bit_length()) if mask >> i & 1} - set(os.sched_getaffinity(0))
        if outside:
            raise BenchArgumentError(f"CPU mask {mask:x} includes CPUs {sorted(outside)} this process may not use.")
    protocol = Protocol(runs=s.runs, warmup_runs=s.warmup, warmup_secs=s.warmup_secs,
                        threads=s.threads, mask=mask, mask_reason=reason, timeout=s.timeout,
                        extra_args=list(s.benchmark_args), op_profile=s.op_profile,
                        op_profile_runs=s.op_profile_runs)
    if protocol.threads > bin(mask).count("1"):
        log(f"warning: {w.name('threads')} {protocol.threads} > {bin(mask).count('1')} CPUs in mask {mask:x}")
    if s.write:
        out_dir = _prepare_out(s.out_dir, target.kind, w)
    else:
        out_dir = Path(tempfile.mkdtemp(prefix="android_bench_"))  # the session logs, removed at the end
    tools = _tool_versions()
    tools["benchmark_binary"] = (file_info(s.benchmark_binary) if s.benchmark_binary
                                 else {"path": "python -m android_bench.hostbench"})
    tools["delegate"] = file_info(delegate) if delegate and needs_delegate else None
    results = {
        "format": "android_bench.results/1",
        "target": target.kind,
        "device": facts,
        "tools": tools,
        "protocol": {**asdict(protocol), "mask": f"{mask:x}", "cpus": cpu_list(mask),
                     "sessions_per_model": protocol.sessions, "runs_per_session": RUNS_PER_SESSION,
                     "order": "interleaved: session k of every model, then session k+1"},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "finished": None,
        "complete": False,
        "error": None,
        "baseline_index": baseline_index,
        "baseline": models[baseline_index].name,
        "models": [],
    }
    log(f"{target.kind}: {facts.get('manufacturer', '')} {facts.get('model', '')} "
        f"({facts.get('abi', '?')}, {facts.get('cores', '?')} cores); taskset {mask:x} = CPUs {cpu_list(mask)} "
        f"({reason}); {protocol.threads} thread(s); {protocol.sessions} sessions x {RUNS_PER_SESSION} runs "
        f"per model, warmup {protocol.warmup_runs} runs / {protocol.warmup_secs:g} s")
    code = EXIT_OK
    try:
        try:
            target.setup(s.benchmark_binary, delegate if needs_delegate else None,
                         [Path(m.path) for m in models])
            measure(target, models, protocol, results, out_dir, log=log, save=s.write)
            if protocol.op_profile:
                profile_ops(target, models, protocol, results, out_dir, log=log, save=s.write)
            results["complete"] = True
        except DeviceLost as e:
            results["error"] = f"{e} The results measured before are kept."
            code = EXIT_DEVICE_LOST
        except KeyboardInterrupt:
            results["error"] = "Interrupted (Ctrl-C); the results measured before are kept."
            code = EXIT_INTERRUPTED
        finally:
            warning = target.cleanup()
            if warning:
                warn(warning)
                results["cleanup_warning"] = warning
            results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            finalize(results, models)
            if s.write:
                report.write_all(results, out_dir)
    finally:
        if not s.write:
            shutil.rmtree(out_dir, ignore_errors=True)
    if code == EXIT_OK and any(m.error for m in models):
        code = EXIT_MODEL_FAILED
    return Results(results, out_dir if s.write else None, code)


# ------------------------------------------------------------------ command line


def _settings_of(args) -> _Settings:
    """``run``'s flags as :func:`benchmark`'s settings."""
    return _Settings(
        models=args.models, host=args.host, serial=args.serial, adb=args.adb,
        benchmark_binary=args.benchmark_binary, delegate=args.delegate, baseline=args.baseline,
        threads=args.threads, cpu_mask=args.cpu_mask, warmup=args.warmup, warmup_secs=args.warmup_secs,
        runs=args.runs, timeout=args.timeout, benchmark_args=list(args.benchmark_arg or []),
        op_profile=args.op_profile, op_profile_runs=args.op_profile_runs, out_dir=args.out, write=True)


def _print_warning(msg: str):
    # Printed even with --quiet: something is left on the device.
    print(f"warning: {msg}", file=sys.stderr)


def main(args) -> int:
    """``android_bench run``: the run of :func:`benchmark`, then its tables and where the reports are.

    The tables (and op profiles) go to stdout; progress (unless ``--quiet``),
    errors and the report paths to stderr. Returns the exit status
    (:attr:`Results.exit_status`, or 2 for a ``BenchError``).
    """
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.recognizer or args.features:
        return _recognizer_main(args, log)
    if not args.models:
        print("error: expected MODEL files (or --recognizer EXPORT_DIR with --features FILE).", file=sys.stderr)
        return EXIT_USAGE
    try:
        res = _run(_settings_of(args), CLI, log, _print_warning)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(res.table())
    for m in res.models:
        if m["op_profile"] and "error" not in m["op_profile"]:
            print(f"\n{m['name']}: " + opprofile.format_profile(m["op_profile"], max_nodes=10))
    if res.error:
        print(f"error: {res.error}", file=sys.stderr)
    for name, error in res.failures.items():
        print(f"error: {name}: {error}", file=sys.stderr)
    out_dir = res.out_dir
    print(f"wrote {out_dir / 'results.json'}, {out_dir / 'report.md'}, {out_dir / 'report.png'}", file=sys.stderr)
    return res.exit_status


def _recognizer_main(args, log) -> int:
    """``run --recognizer``: :func:`android_bench.recognizer_run.bench_recognizers`, its table and files."""
    from android_bench import recognizer, recognizer_run, tflite_c

    if args.models:
        print("error: expected either MODEL files or --recognizer export directories, not both.", file=sys.stderr)
        return EXIT_USAGE
    try:
        if not args.recognizer or not args.features:
            raise BenchArgumentError("--recognizer EXPORT_DIR and --features FILE go together: expected both.")
        mask = parse_mask(args.cpu_mask, None, CLI) if args.cpu_mask else None
        res = recognizer_run.bench_recognizers(
            args.recognizer, args.features, host=args.host, adb=args.adb, serial=args.serial, runner=args.runner,
            delegate=args.delegate, tflite_c=args.tflite_c, kernel=args.kernel, threads=args.threads,
            rounds=args.rounds, warmup=1, cpu_mask=mask, baseline=args.baseline,
            timeout=args.timeout, out_dir=args.out, log=log)
    except (BenchError, recognizer.RunnerError, tflite_c.FetchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(recognizer_run.table(res))
    print(f"wrote {Path(res['out_dir']) / 'results.json'}, {Path(res['out_dir']) / 'report.md'}", file=sys.stderr)
    return 0


def add_parser(sub):
    p = sub.add_parser(
        "run",
        help="latency and memory of .tflite models on an Android device (adb) or this machine (--host)",
        description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 ok, 1 a model failed, 2 bad input or setup, 3 device lost mid-run, "
               "130 interrupted (results so far are kept in --out).",
    )
    p.add_argument("models", nargs="*", metavar="MODEL", help=".tflite files (GQ and baselines)")
    p.add_argument("--recognizer", action="append", metavar="EXPORT_DIR",
                   help="instead of MODELs: the whole streaming recognizer of an export directory "
                        "(gq_speech.deploy.export_streaming), repeatable (one per variant), run by the native "
                        "runner on --features; see docs/BENCHMARK.md")
    p.add_argument("--features", action="append", metavar="FILE",
                   help="--recognizer: .npy (one utterance, float32 [frames, n_mels]) or .npz (one array each)")
    p.add_argument("--runner", metavar="PATH", help="--recognizer on a device: gq_stream built for it "
                                                     "(build-delegate builds it beside the delegate)")
    p.add_argument("--tflite-c", metavar="PATH",
                   help="--recognizer on a device: the TFLite C library for its ABI (libtensorflowlite_c.so)")
    p.add_argument("--kernel", default="auto", help="--recognizer: the delegate's GQ kernel (default auto)")
    p.add_argument("--rounds", type=int, default=3, help="--recognizer: interleaved rounds (default 3)")
    p.add_argument("--host", action="store_true", help="run on this machine (LiteRT + delegate), no adb")
    p.add_argument("--serial", help="device serial (needed when several devices are connected)")
    p.add_argument("--adb", help="adb binary (default: adb on PATH)")
    p.add_argument("--benchmark-binary", metavar="PATH",
                   help="TFLite's benchmark_model for the device ABI (with --host: optional host binary; "
                        "default python -m android_bench.hostbench)")
    p.add_argument("--delegate", metavar="PATH",
                   help="our delegate .so for the device (build-delegate); --host default: the built one")
    p.add_argument("--baseline", help="model (index, file name or stem) the ratios are against "
                                      "(default: the first model without GQ ops)")
    p.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    p.add_argument("--cpu-mask", help="taskset hex mask (default: the big cores, from cpufreq)")
    p.add_argument("--warmup", type=int, default=5, help="warmup runs per session (default 5)")
    p.add_argument("--warmup-secs", type=float, default=0.5,
                   help="minimum warmup seconds per session (--warmup_min_secs; default 0.5, the stock one)")
    p.add_argument("--runs", type=int, default=40,
                   help=f"timed inferences per model (default 40 = 20 sessions of {RUNS_PER_SESSION})")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per session (default 600)")
    p.add_argument("--benchmark-arg", action="append", metavar="FLAG",
                   help="extra benchmark_model flag, repeatable (e.g. --benchmark-arg=--use_xnnpack=false)")
    p.add_argument("--op-profile", action="store_true",
                   help="also an op-level profile of each model (time per node and per op type): one extra "
                        "session with --enable_op_profiling=true after the timed ones; on --host without "
                        "--benchmark-binary, isolated single-node models (`profile` command)")
    p.add_argument("--op-profile-runs", type=int, default=100,
                   help="profiled runs per model for --op-profile (default 100)")
    p.add_argument("--out", help="output folder (default android_bench_out/<target>_<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=main)
    return p

