"""``python -m android_bench.hostbench``: TFLite's ``benchmark_model`` on the host, with LiteRT.

The host counterpart of the stock ``benchmark_model`` binary that
``android_bench run`` drives on a phone: ``run --host`` starts this module as
a fresh process per session with the same flags, and parses its output with
the same parser. So it takes benchmark_model's flags (``--name=value``; here
also ``--name value``) and prints benchmark_model's log lines, in its order
and wording.

Protocol, as the stock tool's:

- Init: load the external delegate (if any), create the interpreter and
  allocate its tensors; the time of all three is ``Init``.
- Inputs are filled once, before the loops, with seeded random values
  (floats uniform in [-1, 1), integers in [0, 10), random booleans).
- Two loops, warmup then timed. A loop runs at least ``min_num_times``
  iterations *and* at least ``min_secs`` seconds, but stops once
  ``max_secs`` have passed. Each iteration is one ``invoke()``, timed in
  whole microseconds.
- Memory: growth of the process's peak resident set (``VmHWM``; ``ru_maxrss``
  is carried over exec from the parent on Linux) from
  the start of the tool to the end of init and to the end of the loops;
  with ``--report_peak_memory_footprint=true`` a thread also samples the
  resident set every ``--memory_footprint_check_interval_ms``.

Output goes to stdout, one ``INFO: `` / ``WARN: `` / ``ERROR: `` line at a
time. Every failure (bad flag value, missing model, a delegate that does not
load, a model that does not allocate or invoke) is an ``ERROR:`` line and
exit status 1, never a traceback.

Only LiteRT (``ai_edge_litert``) is used; TensorFlow is never imported.

Example:
  $ python -m android_bench.hostbench --graph=m.tflite \\
      --external_delegate_path=converters/libgq_delegate.so --num_threads=1 \\
      --num_runs=2 --min_secs=0 --report_peak_memory_footprint=true
"""

from __future__ import annotations

import gc
import math
import os
import re
import sys
import threading
import time
from dataclasses import dataclass

__all__ = ["main", "parse_flags", "parse_delegate_options", "Stat", "format_float"]

_SEED = 0
_TRUE = ("true", "1")
_FALSE = ("false", "0")


class _Failure(Exception):
    """Ends the benchmark: each of ``lines`` is printed as an ``ERROR:`` line."""

    def __init__(self, *lines):
        super().__init__(*lines)
        self.lines = [line for line in lines if line]


# ------------------------------------------------------------------ output


def format_float(x) -> str:
    """A number as C++'s default ``ostream << double`` prints it.

    Six significant digits, no trailing zeros, exponent form below 1e-4 and
    from 1e6 on (``1420.5``, ``1.4205e+06``): printf's ``%g``, which Python's
    ``g`` format implements too.
    """
    return f"{float(x):g}"


def _info(msg):
    print(f"INFO: {msg}", flush=True)


def _warn(msg):
    print(f"WARN: {msg}", flush=True)


def _error(msg):
    print(f"ERROR: {msg}", flush=True)


# ------------------------------------------------------------------ flags


@dataclass(frozen=True)
class _Flag:
    kind: type  # int, float, bool or str
    default: object
    label: str | None  # benchmark_model's name of the parameter in its log


# In the order benchmark_model logs its parameters.
FLAGS = {
    "num_runs": _Flag(int, 50, "Min num runs"),
    "min_secs": _Flag(float, 1.0, "Min runs duration (seconds)"),
    "max_secs": _Flag(float, 150.0, "Max runs duration (seconds)"),
    "run_delay": _Flag(float, -1.0, "Inter-run delay (seconds)"),
    "num_threads": _Flag(int, -1, "Num threads"),
    "warmup_runs": _Flag(int, 1, "Min warmup runs"),
    "warmup_min_secs": _Flag(float, 0.5, "Min warmup runs duration (seconds)"),
    "report_peak_memory_footprint": _Flag(bool, False, "Report the peak memory footprint"),
    "memory_footprint_check_interval_ms": _Flag(int, 50, "Memory footprint check interval (ms)"),
    "graph": _Flag(str, "", "Graph"),
    "external_delegate_path": _Flag(str, "", "External delegate path"),
    "external_delegate_options": _Flag(str, "", "External delegate options"),
}
# Logged whatever the command line says (the rest only when given, as the
# stock tool does at its default verbosity).
_ALWAYS_LOGGED = ("num_threads", "graph")


class _Params(dict):
    """Flag values by name, plus the names the command line set."""

    given: set


def _parse_value(name, kind, text):
    if kind is str:
        return text
    if kind is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise _Failure(f"Expected --{name}=true or --{name}=false. Received: --{name}={text}")
    try:
        value = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise _Failure(f"Expected {what} for --{name}. Received: --{name}={text}") from None
    if kind is float and not math.isfinite(value):
        raise _Failure(f"Expected a finite number for --{name}. Received: --{name}={text}")
    return value


def _takes_next(kind, argv, i):
    """Whether ``--name`` (no ``=``) at ``argv[i]`` takes ``argv[i + 1]`` as its value."""
    if i + 1 >= len(argv):
        return False
    nxt = argv[i + 1]
    if kind is bool:
        return nxt.lower() in _TRUE + _FALSE
    return not nxt.startswith("--")


def parse_flags(argv):
    """benchmark_model's command line.

    Args:
      argv: the arguments, without the program name.

    Returns:
      ``(params, unconsumed)``: the value of every flag in ``FLAGS`` (its
      default when not given; ``params.given`` names the given ones) and the
      arguments that are not flags of this tool, in order.

    Raises:
      _Failure: a flag value of the wrong type or range, or a flag without value.
    """
    params = _Params({name: flag.default for name, flag in FLAGS.items()})
    params.given = set()
    unconsumed = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, text = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        flag = FLAGS.get(name)
        if flag is None:
            unconsumed.append(arg)
            i += 1
            continue
        if not eq:
            if _takes_next(flag.kind, argv, i):
                i += 1
                text = argv[i]
            elif flag.kind is bool:
                text = "true"
            else:
                raise _Failure(f"Expected a value for --{name} (--{name}=VALUE). Received: {arg}")
        params[name] = _parse_value(name, flag.kind, text)
        params.given.add(name)
        i += 1
    _check_ranges(params)
    return params, unconsumed


def _check_ranges(p):
    for name in ("num_runs", "warmup_runs"):
        if p[name] < 0:
            raise _Failure(f"Expected --{name} >= 0. Received: --{name}={p[name]}")
    for name in ("min_secs", "warmup_min_secs", "max_secs"):
        if p[name] < 0:
            raise _Failure(f"Expected --{name} >= 0. Received: --{name}={format_float(p[name])}")
    if p["num_threads"] != -1 and p["num_threads"] < 1:
        raise _Failure(f"Expected --num_threads >= 1, or -1 to let the interpreter choose. "
                       f"Received: --num_threads={p['num_threads']}")
    if p["memory_footprint_check_interval_ms"] < 1:
        raise _Failure("Expected --memory_footprint_check_interval_ms >= 1. Received: "
                       f"--memory_footprint_check_interval_ms={p['memory_footprint_check_interval_ms']}")


def parse_delegate_options(text):
    """``k1:v1;k2:v2`` (benchmark_model's ``--external_delegate_options``) as a dict."""
    options = {}
    for item in text.split(";"):
        if not item.strip():
            continue
        key, colon, value = item.partition(":")
        if not colon or not key.strip():
            raise _Failure("Expected --external_delegate_options as 'key1:value1;key2:value2'. "
                           f"Received: --external_delegate_options={text} (item {item!r})")
        options[key.strip()] = value.strip()
    return options


def _log_params(p):
    _info("Log parameter values verbosely: [0]")
    for name, flag in FLAGS.items():
        if name in p.given or name in _ALWAYS_LOGGED:
            _info(f"{flag.label}: [{_param_text(p[name])}]")
    _info(f"#threads used for CPU inference: [{p['num_threads']}]")


def _param_text(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return format_float(value)
    return str(value)


def _usage():
    lines = ["Usage: python -m android_bench.hostbench --graph=MODEL.tflite [flags]",
             "Flags (benchmark_model's; --name=value or --name value):"]
    for name, flag in FLAGS.items():
        lines.append(f"  --{name}={_param_text(flag.default)}\t{flag.kind.__name__}\t{flag.label}")
    return "\n".join(lines)


# ------------------------------------------------------------------ statistics


class Stat:
    """Integer samples summarised as benchmark_model's ``Stat<int64_t>``.

    Accumulated one sample at a time (a loop of sub-microsecond invokes may
    run millions of times: the samples themselves are not kept).
    """

    __slots__ = ("count", "first", "curr", "min", "max", "sum", "sum_sq")

    def __init__(self):
        self.count = self.first = self.curr = self.min = self.max = self.sum = self.sum_sq = 0

    @classmethod
    def of(cls, samples):
        stat = cls()
        for s in samples:
            stat.add(s)
        return stat

    def add(self, value):
        value = int(value)
        if not self.count:
            self.first = self.min = self.max = value
        else:
            self.min, self.max = min(self.min, value), max(self.max, value)
        self.count += 1
        self.curr = value
        self.sum += value
        self.sum_sq += value * value

    @property
    def avg(self) -> float:
        # The stock tool's empty average is its integer type's "NaN", i.e. 0.
        return self.sum / self.count if self.count else 0.0

    @property
    def std(self) -> int:
        """Population standard deviation, cast to an integer (truncated) as the stock tool does.

        Exact: floor(sqrt(n * sum_sq - sum^2) / n) == isqrt(...) // n.
        """
        if not self.count:
            return 0
        return math.isqrt(self.count * self.sum_sq - self.sum * self.sum) // self.count

    def __str__(self):
        if not self.count:
            return "count=0"
        if self.min == self.max:
            # The stock tool marks "(all same)" only when there is more than one sample.
            return f"count={self.count} curr={self.curr}" + ("(all same)" if self.count > 1 else "")
        return (f"count={self.count} first={self.first} curr={self.curr} min={self.min} max={self.max} "
                f"avg={format_float(self.avg)} std={self.std}")


# ------------------------------------------------------------------ memory


def _max_rss_kb():
    """The process's peak resident set so far, in KB, or None where unknown.

    ``VmHWM`` of ``/proc/self/status`` first: Linux carries ``ru_maxrss``
    over ``execve``, so a session started from a large process (a training
    run calling android_bench) would report its parent's peak. ``ru_maxrss``
    is the fallback where there is no /proc.
    """
    hwm = _status_kb().get("VmHWM")
    if hwm is not None:
        return hwm
    try:
        import resource
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss  # macOS reports bytes


def _rss_kb():
    """The current resident set (``/proc/self/statm``), in KB, or None."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024


def _status_kb():
    """Fields of ``/proc/self/status`` given in kB (``VmRSS``, ``RssAnon``, ...)."""
    fields = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
                    fields[key] = int(parts[0])
    except OSError:
        pass
    return fields


class _PeakMonitor:
    """Samples the resident set on a background thread every ``interval_s``."""

    def __init__(self, interval_s):
        self._interval = interval_s
        self._stop = threading.Event()
        self.peak_kb = 0
        self._thread = threading.Thread(target=self._loop, name="peak-memory", daemon=True)

    def _loop(self):
        while True:
            rss = _rss_kb()
            if rss is not None:
                self.peak_kb = max(self.peak_kb, rss)
            if self._stop.wait(self._interval):
                return

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------ model


def _runtime_lines(exc):
    """The lines of a LiteRT error message (its C++ error reporter joins them)."""
    text = str(exc).replace(" Node number", "\nNode number")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _ignore_delegate_cleanup(hook):
    # LiteRT's Delegate.__del__ reads attributes its __init__ never set when
    # the library fails to load; that AttributeError is noise, not the error.
    def unraisable(info):
        if not (isinstance(info.exc_value, AttributeError)
                and getattr(info.object, "__qualname__", None) == "Delegate.__del__"):
            hook(info)

    return unraisable


def _load_delegate(load_delegate, path, options):
    if not os.path.isfile(path):
        raise _Failure(f"Failed to load delegate from {path}: no such file")
    hook = sys.unraisablehook
    sys.unraisablehook = _ignore_delegate_cleanup(hook)
    try:
        try:
            return load_delegate(path, options)
        except (OSError, ValueError, RuntimeError) as e:
            reason = str(e)
        gc.collect()  # the half-built Delegate goes now, while the hook is in place
    finally:
        sys.unraisablehook = hook
    prefix = f"Failed to load delegate from {path}"
    reason = reason[len(prefix):].strip() if reason.startswith(prefix) else reason
    raise _Failure(f"{prefix}: {' '.join(reason.split())}")


def _open_model(params):
    """(interpreter, init time in us) for ``--graph``, with the external delegate if given."""
    from ai_edge_litert.interpreter import Interpreter, load_delegate

    graph = params["graph"]
    try:
        with open(graph, "rb"):
            pass
    except OSError as e:
        raise _Failure(f"Could not open '{graph}'. ({e.strerror or e})") from None
    options = parse_delegate_options(params["external_delegate_options"])
    num_threads = None if params["num_threads"] == -1 else params["num_threads"]

    start = time.perf_counter_ns()
    delegates = []
    if params["external_delegate_path"]:
        delegates.append(_load_delegate(load_delegate, params["external_delegate_path"], options))
    try:
        interpreter = Interpreter(model_path=graph, experimental_delegates=delegates or None,
                                  num_threads=num_threads)
    except (ValueError, RuntimeError) as e:
        raise _Failure(*_runtime_lines(e), f"Failed to load model '{graph}'.") from None
    _info(f"Loaded model {graph}")
    try:
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        lines = _runtime_lines(e)
        unresolved = sorted(set(re.findall(r"unresolved custom op: (\w+)", str(e))))
        if unresolved and not params["external_delegate_path"]:
            lines.append(f"The model uses custom op(s) {', '.join(unresolved)} that no kernel of the runtime "
                         "implements: pass the delegate that does with --external_delegate_path=PATH.")
        raise _Failure(*lines, "Failed to allocate tensors!") from None
    init_us = (time.perf_counter_ns() - start) // 1000
    return interpreter, init_us


def _fill_inputs(interpreter):
    import numpy as np

    rng = np.random.default_rng(_SEED)
    for detail in interpreter.get_input_details():
        shape, dtype = tuple(detail["shape"]), np.dtype(detail["dtype"])
        if dtype.kind == "f":
            value = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
        elif dtype.kind in "iu":
            value = rng.integers(0, 10, size=shape).astype(dtype)
        elif dtype.kind == "b":
            value = rng.integers(0, 2, size=shape).astype(bool)
        elif dtype.kind == "c":
            value = (rng.uniform(-1.0, 1.0, size=shape) + 1j * rng.uniform(-1.0, 1.0, size=shape)).astype(dtype)
        else:
            raise _Failure(f"Input '{detail['name']}' has type {dtype}; expected a float, integer, bool or "
                           "complex tensor (this tool fills inputs with random numbers).")
        try:
            interpreter.set_tensor(detail["index"], value)
        except (ValueError, RuntimeError) as e:
            raise _Failure(*_runtime_lines(e), f"Failed to set input '{detail['name']}'.") from None


# ------------------------------------------------------------------ benchmark


def _run_loop(interpreter, min_runs, min_secs, max_secs, run_delay):
    """One warmup or timed loop, as the stock tool runs it: the ``Stat`` of its times (us)."""
    _info(f"Running benchmark for at least {min_runs} iterations and at least {format_float(min_secs)} "
          f"seconds but terminate if exceeding {format_float(max_secs)} seconds.")
    invoke = interpreter.invoke
    now = time.perf_counter_ns()
    min_finish, max_finish = now + int(min_secs * 1e9), now + int(max_secs * 1e9)
    stat = Stat()
    while (stat.count < min_runs or now < min_finish) and now <= max_finish:
        t0 = time.perf_counter_ns()
        try:
            invoke()
        except (ValueError, RuntimeError) as e:
            raise _Failure(*_runtime_lines(e), "Benchmarking failed.") from None
        t1 = time.perf_counter_ns()
        stat.add((t1 - t0) // 1000)
        if run_delay > 0:
            time.sleep(run_delay)
        now = time.perf_counter_ns()
    _info(str(stat))
    return stat


def _benchmark(argv):
    _info("STARTING!")
    if any(a in ("--help", "-h", "--helpfull") for a in argv):
        for line in _usage().splitlines():
            _info(line)
        return 0
    params, unconsumed = parse_flags(argv)
    if unconsumed:
        _warn(f"Unconsumed cmdline flags: {' '.join(unconsumed)}")
    _log_params(params)
    if not params["graph"]:
        raise _Failure("Please specify the name of your TF Lite input file with --graph")

    import ai_edge_litert.interpreter  # noqa: F401
    import numpy.random  # noqa: F401  (loaded before the start of the memory accounting)

    start_kb = _max_rss_kb()
    monitor = None
    if params["report_peak_memory_footprint"]:
        monitor = _PeakMonitor(params["memory_footprint_check_interval_ms"] / 1000).start()
    try:
        interpreter, init_us = _open_model(params)
        init_kb = _max_rss_kb()
        _info(f"The input model file size (MB): {format_float(os.path.getsize(params['graph']) / 1e6)}")
        _info(f"Initialized session in {format_float(init_us / 1e3)}ms.")
        _fill_inputs(interpreter)
        warmup = _run_loop(interpreter, params["warmup_runs"], params["warmup_min_secs"],
                           params["max_secs"], params["run_delay"])
        timed = _run_loop(interpreter, params["num_runs"], params["min_secs"],
                          params["max_secs"], params["run_delay"])
        end_kb = _max_rss_kb()
    finally:
        if monitor is not None:
            monitor.stop()

    _info(f"Inference timings in us: Init: {init_us}, First inference: {warmup.first}, "
          f"Warmup (avg): {format_float(warmup.avg)}, Inference (avg): {format_float(timed.avg)}")
    if start_kb is not None:
        _info("Note: as the benchmark tool itself affects memory footprint, the following is only "
              "APPROXIMATE to the actual memory footprint of the model at runtime. Take the information "
              "at your one discretion.")
        _info(f"Memory footprint delta from the start of the tool (MB): "
              f"init={format_float((init_kb - start_kb) / 1024)} overall={format_float((end_kb - start_kb) / 1024)}")
    if monitor is not None:
        peak_kb = max(monitor.peak_kb, end_kb or 0)
        if peak_kb > 0:
            _info(f"Overall peak memory footprint (MB) via periodic monitoring: {format_float(peak_kb / 1024)}")
    status = _status_kb()
    if "VmRSS" in status:
        _info("Memory status at the end of exeution:")
        _info(f"- VmRSS              : {format_float(status['VmRSS'] / 1024)} MB")
        if "RssAnon" in status:
            _info(f"+ RssAnnon           : {format_float(status['RssAnon'] / 1024)} MB")
        if "RssFile" in status:
            file_kb = status["RssFile"] + status.get("RssShmem", 0)
            _info(f"+ RssFile + RssShmem : {format_float(file_kb / 1024)} MB")
    return 0


def main(argv=None) -> int:
    """Runs one benchmark_model-style session.

    Args:
      argv: command-line arguments without the program name (default
        ``sys.argv[1:]``), e.g. ``["--graph=m.tflite", "--num_runs=2"]``.

    Returns:
      The exit status: 0 on success, 1 after an ``ERROR:`` line.
    """
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        try:
            return _benchmark(argv)
        except _Failure as e:
            for line in e.lines:
                _error(line)
            return 1
        except KeyboardInterrupt:
            _error("Interrupted.")
            return 130
        except BrokenPipeError:
            raise
        except Exception as e:  # noqa: BLE001  (the contract: an ERROR line, never a traceback)
            _error(f"Unexpected {type(e).__name__}: {e}")
            return 1
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): nothing more can be told, and
        # the interpreter's own final flush must not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1

if __name__ == "__main__":
    sys.exit(main())
