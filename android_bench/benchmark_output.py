"""Parser for the text that TFLite's stock ``benchmark_model`` prints.

The tool writes a log, one fact per line. Any line may start with a severity
tag (``INFO: ``, ``WARN: ``, ``WARNING: ``, ``ERROR: ``, ``VERBOSE: ``), may
end in CRLF, and lines this module does not know are skipped, so new log
lines in later tool versions do no harm. The lines it reads:

- Echo of the parameters, one per line, value in square brackets:
  ``Graph: [/data/local/tmp/m.tflite]``, ``Num threads: [1]``. They become
  :attr:`BenchmarkOutput.params` (``{"Graph": "/data/local/tmp/m.tflite"}``).
- ``The input model file size (MB): 1.5`` and
  ``Initialized session in 12.3ms.`` (the latter in milliseconds).
- Two benchmark loops, each announced by a line starting ``Running benchmark
  for at least``: the warmup loop first, then the timed loop. Each loop ends
  with one statistics line of the integer microsecond run times, written in
  one of three shapes: ``count=0`` (no runs), ``count=N curr=T(all same)``
  (every run took ``T``; a lone run is ``count=1 curr=T``), or
  ``count=N first=F curr=C min=A max=B avg=M std=S`` where ``first`` and
  ``curr`` are the first and the last run and ``avg``/``std`` may be printed
  in C++'s default float notation (``1.4205e+06``). The statistics line after
  the first announcement is the warmup's, the one after the second is the
  timed loop's. An output with a single statistics line and fewer than two
  announcements is read as a timed loop without warmup, unless a lone
  announcement is not followed by the closing summary: then the process died
  between the two loops and the line belongs to the warmup.
- The closing summary, ``Inference timings in us: Init: 12345, First
  inference: 2345, Warmup (avg): 2100.5, Inference (avg): 1420.5`` (all in
  microseconds; older tools wrote ``Average inference timings in us:`` and had
  no first inference).
- Memory: ``Memory footprint delta from the start of the tool (MB): init=X
  overall=Y`` (older tools: ``Peak memory footprint (MB): init=X overall=Y``),
  ``Overall peak memory footprint (MB) via periodic monitoring: Z``, and after
  ``Memory status at the end of exeution:`` (sic) a ``- VmRSS : N MB`` line.
  The tool prints ``-1`` or ``nan`` when it could not measure; those become
  ``None``.

Failed runs are diagnosed from the same text: :func:`parse` raises
:class:`BenchmarkOutputError` with what to do (pass the GQ delegate, check
the delegate's ABI, check the model path, suspect a killed process) and the
tail of the log.

Example:
    >>> out = parse("count=2 first=1510 curr=1390 min=1390 max=1510 avg=1450 std=60")
    >>> out.inference.samples()
    [1510.0, 1390.0]
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["BenchmarkOutput", "BenchmarkOutputError", "RunStat", "parse"]

# How many non-empty lines of the tool's own output a failure message quotes:
# enough to show the tool's last error and what led to it, short enough to
# read in a terminal.
_TAIL_LINES = 15
# Quoted lines are cut to this length so that binary garbage in a log cannot
# make the error message itself unreadable.
_MAX_QUOTED_CHARS = 200
_DELEGATE_HINT = (
    "pass `--delegate PATH` (build it with "
    "`python -m android_bench build-delegate --ndk PATH --abi arm64-v8a`)"
)

_PREFIX = re.compile(r"(INFO|WARN|WARNING|ERROR|VERBOSE):\s?")
# Strict on purpose: Python's float() would also take "1_000" or "infinity",
# which the C++ tool never prints, so they would signal a corrupt line.
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_NOT_A_NUMBER = re.compile(r"[-+]?nan(?:\(\w*\))?", re.IGNORECASE)
_INFINITY = re.compile(r"[-+]?inf", re.IGNORECASE)
# The parameter name is bounded and colon-free so the match stays linear on
# long garbage lines.
_PARAM = re.compile(r"([A-Za-z][^:\[\]]{0,80}):\s*\[(.*)\]")
_INITIALIZED = re.compile(r"Initialized session in\s*(\S+?)\s*ms\.?")
_VM_RSS_START = re.compile(r"-?\s*VmRSS\s*:")
_GQ_OP = re.compile(r"\bGQ_[A-Za-z0-9_]+")
_CUSTOM_OP = re.compile(r"unresolved custom op:?\s*([A-Za-z0-9_]+)", re.IGNORECASE)
_RSS_UNITS = {"MB": 1.0, "kB": 1 / 1024, "KB": 1 / 1024, "GB": 1024.0}
_ALL_SAME = "(all same)"


class BenchmarkOutputError(ValueError):
    """The output of ``benchmark_model`` has no usable timed loop, or a corrupt line.

    The message says what was expected and what was found, gives hints on
    the cause when the log shows one, and quotes the log's last lines.
    """


@dataclass
class RunStat:
    """The statistics line that closes one benchmark loop.

    Times are in microseconds. Fields the line does not print are ``None``:
    ``count=0`` prints none, ``count=N curr=T(all same)`` only ``curr``.

    Attributes:
        count: Number of runs in the loop.
        first_us: Time of the first run.
        curr_us: Time of the last run.
        min_us: Fastest run.
        max_us: Slowest run.
        avg_us: Mean run time.
        std_us: Standard deviation of the run times.
        all_same: Whether the line says ``(all same)``: every run took ``curr_us``.
    """

    count: int
    first_us: float | None = None
    curr_us: float | None = None
    min_us: float | None = None
    max_us: float | None = None
    avg_us: float | None = None
    std_us: float | None = None
    all_same: bool = False

    def samples(self) -> list[float] | None:
        """The individual run times, when the line determines them exactly.

        The tool never lists the runs, but a few shapes of the line pin them
        all down: no runs, all runs equal, one run (it is ``curr``) and two
        runs (``first`` then ``curr``).

        Returns:
            The run times in run order, or ``None`` when the line leaves them
            open (three or more distinct runs, or a field missing).

        Example:
            >>> RunStat(count=3, curr_us=9.0, all_same=True).samples()
            [9.0, 9.0, 9.0]
        """
        if self.count == 0:
            return []
        if self.curr_us is None:
            return None
        if self.all_same:
            return [self.curr_us] * self.count
        if self.count == 1:
            return [self.curr_us]
        if self.count == 2 and self.first_us is not None:
            return [self.first_us, self.curr_us]
        return None


@dataclass
class BenchmarkOutput:
    """Everything :func:`parse` reads from one ``benchmark_model`` run.

    Values the output does not give are ``None``.

    Attributes:
        params: The echoed parameters, name to value without brackets
            (``{"Graph": "m.tflite", "Num threads": "1"}``).
        model_size_mb: Size of the model file.
        init_us: Initialization time, from the summary, else from
            ``Initialized session in``.
        first_inference_us: The first inference (the first warmup run), from
            the summary, else from the warmup line when that pins it down.
        warmup: The warmup loop's statistics line.
        inference: The timed loop's statistics line.
        init_footprint_mb: Memory footprint growth during initialization.
        overall_footprint_mb: Memory footprint growth over the whole run.
        peak_memory_mb: Peak memory by periodic monitoring.
        vm_rss_mb: Resident set size at the end of the run.
        warnings: Messages of ``WARN:``/``WARNING:`` lines, tag removed.
        errors: Messages of ``ERROR:`` lines, tag removed.
    """

    inference: RunStat
    params: dict[str, str] = field(default_factory=dict)
    model_size_mb: float | None = None
    init_us: float | None = None
    first_inference_us: float | None = None
    warmup: RunStat | None = None
    init_footprint_mb: float | None = None
    overall_footprint_mb: float | None = None
    peak_memory_mb: float | None = None
    vm_rss_mb: float | None = None
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _quote(line: str) -> str:
    return repr(line if len(line) <= _MAX_QUOTED_CHARS else line[:_MAX_QUOTED_CHARS] + "...")


class _Line:
    """One line of output: its 1-based number, raw text, and text without the tag."""

    def __init__(self, number: int, raw: str, tag: str, body: str):
        self.number, self.raw, self.tag, self.body = number, raw, tag, body

    def error(self, expected: str, received: str) -> BenchmarkOutputError:
        return BenchmarkOutputError(
            f"Expected {expected} in line {self.number} of the benchmark_model output. "
            f"Received: {received} (line {_quote(self.raw)})."
        )

    def number_of(self, what: str, text: str, unknown_ok: bool = False) -> float | None:
        """Reads a number; ``unknown_ok`` maps nan and negatives (the tool's "unmeasured") to None."""
        if unknown_ok and _NOT_A_NUMBER.fullmatch(text):
            return None
        if not _NUMBER.fullmatch(text) and not _INFINITY.fullmatch(text):
            raise self.error(f"a number for {what}", _quote(text))
        value = float(text)
        if not math.isfinite(value):
            raise self.error(f"a finite number for {what}", _quote(text))
        if unknown_ok and value < 0:
            return None
        return value

    def pairs(self, text: str) -> dict[str, str]:
        """Splits ``a=1 b=2`` into ``{"a": "1", "b": "2"}``."""
        result = {}
        for token in text.split():
            key, sep, value = token.partition("=")
            if not sep or not key:
                raise self.error("`name=value` fields", _quote(token))
            result[key] = value
        return result


def _split_lines(text: str) -> list[_Line]:
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        match = _PREFIX.match(stripped)
        tag = match.group(1) if match else ""
        body = stripped[match.end():].strip() if match else stripped
        lines.append(_Line(number, raw, tag, body))
    return lines


def _parse_stat(line: _Line) -> RunStat:
    # Plain string operations rather than regular expressions here and for
    # VmRSS keep the time linear in the line length on garbage input.
    body = line.body
    all_same = body.endswith(_ALL_SAME)
    if all_same:
        body = body[: -len(_ALL_SAME)]
    fields = line.pairs(body)
    count_text = fields.get("count", "")
    # The digit cap keeps int() clear of Python's limit on huge digit strings
    # and rejects counts no real run reaches.
    if not count_text.isascii() or not count_text.isdigit() or len(count_text) > 18:
        raise line.error("a run count `count=N`", _quote(count_text))
    stat = RunStat(count=int(count_text), all_same=all_same)
    for key, attribute in (("first", "first_us"), ("curr", "curr_us"), ("min", "min_us"),
                           ("max", "max_us"), ("avg", "avg_us"), ("std", "std_us")):
        if key in fields:
            setattr(stat, attribute, line.number_of(f"`{key}`", fields[key]))
    if stat.count > 0 and stat.curr_us is None:
        raise line.error(f"`curr=` in a statistics line of count={stat.count}", "no `curr=`")
    return stat


def _parse_summary(line: _Line) -> dict[str, float | None]:
    """Reads ``... in us: Init: 1, First inference: 2, ...`` into ``{"Init": 1.0, ...}``."""
    _, _, rest = line.body.partition(":")
    values = {}
    for part in rest.split(","):
        key, sep, value = part.rpartition(":")
        if sep:
            values[key.strip()] = value.strip()
    result = {}
    # Only the values this module returns are checked: other keys may change
    # between tool versions without making the output unusable.
    for key in ("Init", "First inference"):
        if key in values:
            result[key] = line.number_of(f"`{key}`", values[key], unknown_ok=True)
    return result


def _tail(lines: list[_Line]) -> str:
    shown = [line.raw.strip() for line in lines if line.raw.strip()][-_TAIL_LINES:]
    return "Last lines of the output:\n" + "\n".join(
        "  | " + (s if len(s) <= _MAX_QUOTED_CHARS else s[:_MAX_QUOTED_CHARS] + "...") for s in shown
    )


def _delegate_failed(log_lines: list[str]) -> bool:
    for line in log_lines:
        if "failed to load delegate" in line:
            return True
        if "external delegate" in line and any(w in line for w in ("dlopen", "fail", "cannot open")):
            return True
        if "dlopen" in line and any(w in line for w in ("fail", "cannot open", "error")):
            return True
    return False


def _hints(lines: list[_Line], params: dict[str, str], announcements: int) -> list[str]:
    """Likely causes of a run without a timed loop, most fundamental first."""
    # Parameter echoes are left out: a path such as `GQ_model.tflite` or
    # `failed/run.so` says nothing about what went wrong.
    log_lines = [line.body for line in lines if not _PARAM.fullmatch(line.body)]
    log = "\n".join(log_lines)
    lower_lines = [line.lower() for line in log_lines]
    lower = log.lower()
    hints = []
    delegate = params.get("External delegate path")
    delegate_failed = _delegate_failed(lower_lines)
    if delegate_failed:
        where = f" ({delegate})" if delegate else ""
        hints.append(
            f"The delegate .so{where} could not be loaded: wrong ABI (e.g. arm64-v8a vs "
            "armeabi-v7a)? built for the host instead of the device? missing on the device?"
        )
    if "could not open" in lower or "failed to mmap model" in lower or "Graph" not in params:
        graph = params.get("Graph")
        where = f" ({graph})" if graph else ""
        hints.append(
            f"The model file{where} could not be read: check that the path exists on the "
            "target and is readable (and that `--graph` was given)."
        )
    gq_ops = sorted(set(_GQ_OP.findall(log)))
    custom = _CUSTOM_OP.search(log)
    custom_failed = custom is not None or "didn't find op for builtin opcode 'custom'" in lower or (
        "failed to initialize the interpreter" in lower and bool(gq_ops)
    )
    if custom_failed:
        ops = ", ".join(gq_ops) or (custom.group(1) if custom else "a custom op")
        if gq_ops and delegate_failed:
            hints.append(f"So the model's {ops} stayed unresolved: fixing the delegate fixes this too.")
        elif gq_ops and delegate:
            hints.append(
                f"The model uses {ops}, which the delegate ({delegate}) loaded but did not take: "
                "is it built from this checkout? Rebuild it with "
                "`python -m android_bench build-delegate --ndk PATH --abi arm64-v8a`."
            )
        elif gq_ops:
            hints.append(
                f"The model uses {ops}, which stock benchmark_model does not have: GQ models "
                f"need our delegate: {_DELEGATE_HINT}."
            )
        else:
            hints.append(f"The model uses {ops}, which neither benchmark_model nor a delegate resolves.")
    if not hints and announcements:
        hints.append(
            "The output stops inside a benchmark loop: the process was probably killed "
            "(timeout, out of memory, crash)."
        )
    return hints


def _no_timed_loop(lines: list[_Line], params: dict[str, str], announcements: int,
                   errors: list[str]) -> BenchmarkOutputError:
    expected = (
        "Expected the timed loop's statistics line (`count=... first=... curr=...`) in the "
        "benchmark_model output. Received"
    )
    if not any(line.body for line in lines):
        return BenchmarkOutputError(f"{expected} an empty output: did benchmark_model start at all?")
    parts = [f"{expected} none."] + _hints(lines, params, announcements)
    if errors:
        shown = "; ".join(_quote(e.rstrip("."))[1:-1] for e in errors[-5:])
        more = f" (last 5 of {len(errors)})" if len(errors) > 5 else ""
        parts.append(f"The tool's errors{more}: {shown}.")
    return BenchmarkOutputError(" ".join(parts) + "\n" + _tail(lines))


def parse(text: str) -> BenchmarkOutput:
    """Reads the output of one ``benchmark_model`` run.

    Args:
        text: The tool's combined stdout and stderr.

    Returns:
        The parameters, timings and memory figures the output gives.

    Raises:
        BenchmarkOutputError: If there is no statistics line of the timed
            loop (the message gives likely causes and the end of the log), or
            if a line the parser reads holds a value that is not a number.
            No other exception escapes, whatever the input.

    Example:
        >>> out = parse("Graph: [m.tflite]\\ncount=2 curr=900(all same)\\n")
        >>> out.params, out.inference.samples()
        ({'Graph': 'm.tflite'}, [900.0, 900.0])
    """
    if not isinstance(text, str):
        raise BenchmarkOutputError(f"Expected the output as str. Received: {type(text).__name__}.")
    lines = _split_lines(text)
    params: dict[str, str] = {}
    warnings: list[str] = []
    errors: list[str] = []
    values: dict[str, float | None] = {}
    summary: dict[str, float | None] | None = None
    # (loop number, index of the line, stat): the loop number counts the
    # announcements seen so far, so 1 is the warmup and 2 the timed loop.
    stats: list[tuple[int, int, RunStat]] = []
    announcements = 0
    summary_index = -1
    for index, line in enumerate(lines):
        body = line.body
        if line.tag == "ERROR":
            errors.append(body)
        elif line.tag in ("WARN", "WARNING"):
            warnings.append(body)
        if body.startswith("count="):
            stats.append((announcements, index, _parse_stat(line)))
        elif body.startswith("Running benchmark for at least"):
            announcements += 1
        elif "nference timings in us:" in body:
            summary, summary_index = _parse_summary(line), index
        elif body.startswith("The input model file size (MB):"):
            values["model_size_mb"] = line.number_of("the model size", body.rpartition(":")[2].strip())
        elif body.startswith("Initialized session in"):
            match = _INITIALIZED.fullmatch(body)
            if not match:
                raise line.error("`Initialized session in Xms.`", _quote(body))
            values["initialized_ms"] = line.number_of("the init time", match.group(1))
        elif body.startswith(("Memory footprint delta from the start of the tool (MB):",
                              "Peak memory footprint (MB):")):
            fields = line.pairs(body.partition("(MB):")[2])
            for key in ("init", "overall"):
                if key in fields:
                    values[f"{key}_footprint_mb"] = line.number_of(f"`{key}`", fields[key], unknown_ok=True)
        elif body.startswith("Overall peak memory footprint (MB)"):
            values["peak_memory_mb"] = line.number_of(
                "the peak memory", body.rpartition(":")[2].strip(), unknown_ok=True)
        elif _VM_RSS_START.match(body):
            amount = body.partition(":")[2].strip()
            scale = 1.0  # The tool prints MB; a bare number is taken as MB too.
            for unit, unit_scale in _RSS_UNITS.items():
                if amount.endswith(unit):
                    amount, scale = amount[: -len(unit)].strip(), unit_scale
                    break
            rss = line.number_of("VmRSS (`- VmRSS : N MB`)", amount, unknown_ok=True)
            values["vm_rss_mb"] = None if rss is None else rss * scale
        else:
            match = _PARAM.fullmatch(body)
            if match:
                params[match.group(1).strip()] = match.group(2)

    warmup: RunStat | None = None
    inference: RunStat | None = None
    if announcements >= 2:
        warmup = next((s for loop, _, s in stats if loop == 1), None)
        inference = next((s for loop, _, s in stats if loop >= 2), None)
    elif len(stats) >= 2:
        warmup, inference = stats[0][2], stats[1][2]
    elif len(stats) == 1:
        _, index, stat = stats[0]
        if announcements == 1 and summary_index < index:
            warmup = stat
        else:
            inference = stat
    if inference is None:
        raise _no_timed_loop(lines, params, announcements, errors)

    init_us = summary.get("Init") if summary else None
    if init_us is None and values.get("initialized_ms") is not None:
        init_us = values["initialized_ms"] * 1000.0
    first_us = summary.get("First inference") if summary else None
    if first_us is None and warmup is not None and warmup.count > 0:
        # The warmup's first run is the process's first inference. samples()
        # is avoided: an `(all same)` line of a huge count would build a huge list.
        if warmup.first_us is not None:
            first_us = warmup.first_us
        elif warmup.all_same or warmup.count == 1:
            first_us = warmup.curr_us
    return BenchmarkOutput(
        params=params,
        model_size_mb=values.get("model_size_mb"),
        init_us=init_us,
        first_inference_us=first_us,
        warmup=warmup,
        inference=inference,
        init_footprint_mb=values.get("init_footprint_mb"),
        overall_footprint_mb=values.get("overall_footprint_mb"),
        peak_memory_mb=values.get("peak_memory_mb"),
        vm_rss_mb=values.get("vm_rss_mb"),
        warnings=warnings,
        errors=errors,
    )
